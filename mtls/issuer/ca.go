// Package issuer is a small SPIFFE issuer for laptops, demos and tests: a
// certificate authority kept in a folder, which signs X.509-SVIDs and serves
// them on the SPIFFE Workload API over unix sockets. It is what
// `pillion identity` runs. Production uses SPIRE or any other Workload API or
// file-based SVID source; nothing in the sidecar depends on this package.
//
// Each CA is one self-signed ECDSA P-256 certificate whose only URI SAN is
// the trust domain's ID (spiffe://<trust-domain>). SVIDs follow the SPIFFE
// X509-SVID specification and carry no intermediates: the chain is the leaf
// alone, and the trust bundle is the set of CA certificates.
//
// # Rotation
//
// An Authority rotates the CA as SPIRE does, with overlapping bundles. Let L
// be the active CA's lifetime. At L/2 a next CA is prepared (new key, valid
// the configured TTL from then) and published in the bundle; at 3L/4 it is
// activated: it signs from then on and the old one becomes the previous CA,
// which stays in the bundle until it expires. Every peer watching the
// Workload API thus trusts a CA L/4 before anything it signed is presented,
// and keeps trusting the old CA for as long as anything it signed can live:
// SVIDs are capped at their CA's expiry, and an SVID TTL of at most L/4 (what
// `pillion identity` enforces) means none is ever cut short.
//
// The folder is the state, re-read under its lock at every step, so several
// processes (a server and `pillion identity issue`) may share it. The files
// and the order they change in are described in folder.go; a crash at any
// point leaves a folder that loads and finishes the step.
package issuer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Names of the CA files in its folder. Certificates are PEM, mode 0644;
// keys are PEM "PRIVATE KEY" (PKCS #8), mode 0600.
const (
	// CACertFile holds the active CA's certificate: the one that signs.
	CACertFile = "ca.pem"
	// CAKeyFile holds the active CA's private key.
	CAKeyFile = "ca-key.pem"
	// NextCACertFile holds the prepared next CA's certificate, from half of
	// the active CA's lifetime until it is activated.
	NextCACertFile = "ca-next.pem"
	// NextCAKeyFile holds the next CA's private key.
	NextCAKeyFile = "ca-next-key.pem"
	// PreviousCACertFile holds the previous CA's certificate, from the
	// activation of its successor until it expires. Its key is gone.
	PreviousCACertFile = "ca-previous.pem"
)

// backdate is how far before now certificates start, so that a peer whose
// clock is a little behind does not reject a certificate issued just now.
const backdate = 10 * time.Second

// CA signs X.509-SVIDs for one trust domain. Get one from OpenCA or from an
// Authority's State; the zero CA is not usable. It is immutable and safe for
// concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	now  func() time.Time
}

var _ KeySource = (*CA)(nil)

// newCA makes a new key and a self-signed CA certificate for td, valid from
// backdate before t until ttl after t. It writes nothing.
func newCA(td spiffeid.TrustDomain, ttl time.Duration, t time.Time, now func() time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"pillion"}, CommonName: "pillion identity CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.Add(ttl),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("issuer: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuer: create CA certificate: %w", err)
	}
	return &CA{td: td, cert: cert, key: key, now: now}, nil
}

// keyPEM is the CA's key as CAKeyFile holds it.
func (ca *CA) keyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

// parseCACert parses a CA certificate of td. Whether it is valid now is the
// schedule's business (see checkActive).
func parseCACert(data []byte, td spiffeid.TrustDomain) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("more than one PEM block; the CA is one certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("not a CA certificate")
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("has %d URI SANs, want one, the trust domain ID", len(cert.URIs))
	}
	certTD, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("URI SAN %q: %w", cert.URIs[0], err)
	}
	if certTD != td {
		return nil, fmt.Errorf("the CA is for trust domain %s, not %s", certTD, td)
	}
	if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, fmt.Errorf("the key is %T, want ECDSA", cert.PublicKey)
	}
	return cert, nil
}

func parseKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New(`no PEM "PRIVATE KEY" block`)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the key is %T, want ECDSA", key)
	}
	return ec, nil
}

// TrustDomain is the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate is the CA certificate. The caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns an X.509 bundle of this CA's certificate alone. Each call
// returns a new Bundle the caller may change. While an Authority rotates,
// the trust domain's bundle is its State's X509Bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Current makes a CA a KeySource that never changes: the CA signs and its
// certificate is the whole bundle; the State's Changed channel is nil.
func (ca *CA) Current() *State {
	return &State{Active: ca, Bundle: []*x509.Certificate{ca.cert}}
}

// Issue signs a new X.509-SVID for id with a fresh ECDSA P-256 key: one URI
// SAN (id), a random 128-bit serial, not a CA, key usage digital signature,
// extended key usages server and client auth, valid from a few seconds ago
// (for clock skew) until ttl from now or the CA's own expiry, whichever is
// first. The chain is the leaf alone; Bundle verifies it. id must be in the
// CA's trust domain and name a workload (have a path).
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if id.IsZero() || id.Path() == "" {
		return nil, fmt.Errorf("issuer: %q is not a workload ID (spiffe://%s/path...)", id, ca.td)
	}
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("issuer: %s is not in trust domain %s", id, ca.td)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("issuer: SVID lifetime %v: must be positive", ttl)
	}
	t := ca.now()
	notAfter := t.Add(ttl)
	if !t.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("issuer: the CA expired at %s", ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuer: SVID key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notBefore := t.Add(-backdate)
	if notBefore.Before(ca.cert.NotBefore) {
		notBefore = ca.cert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"pillion"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuer: sign SVID for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuer: sign SVID for %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// newSerial returns a random, positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	for {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("issuer: serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}
