// Package issuer is a small SPIFFE issuer for laptops, demos and tests: a
// certificate authority kept in a folder, which signs X.509-SVIDs and serves
// them on the SPIFFE Workload API over unix sockets. It is what
// `pillion identity` runs. Production uses SPIRE or any other Workload API or
// file-based SVID source; nothing in the sidecar depends on this package.
//
// The CA is one self-signed ECDSA P-256 certificate whose only URI SAN is the
// trust domain's ID (spiffe://<trust-domain>). SVIDs follow the SPIFFE
// X509-SVID specification and carry no intermediates: the chain is the leaf
// alone and the CA certificate is the trust bundle.
package issuer

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Names of the CA's files in its folder.
const (
	// CACertFile holds the CA certificate, PEM, mode 0644. It is the trust
	// bundle of the trust domain.
	CACertFile = "ca.pem"
	// CAKeyFile holds the CA's private key, PEM "PRIVATE KEY" (PKCS #8),
	// mode 0600.
	CAKeyFile = "ca-key.pem"
)

// backdate is how far before now certificates start, so that a peer whose
// clock is a little behind does not reject a certificate issued just now.
const backdate = 10 * time.Second

// CA signs X.509-SVIDs for one trust domain. Get one from OpenCA; the zero
// CA is not usable. It is immutable once opened and safe for concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
	now  func() time.Time
}

// OpenCA loads the CA kept in dir, or creates it when dir holds no CA
// certificate: dir is created (0755) if needed, and a new key and
// self-signed certificate valid for ttl are written to CACertFile and
// CAKeyFile, each atomically (temporary file, then rename), the key first,
// so a crash leaves either no CA or a whole one. created says which happened.
//
// Loading fails, naming the file and the reason, when the PEM does not parse,
// the certificate is not a CA or belongs to another trust domain than td, the
// key does not match the certificate, or the CA has expired. Concurrent
// OpenCA calls on one dir, in this process or others, agree on one CA.
func OpenCA(dir string, td spiffeid.TrustDomain, ttl time.Duration) (ca *CA, created bool, err error) {
	return openCA(dir, td, ttl, time.Now)
}

func openCA(dir string, td spiffeid.TrustDomain, ttl time.Duration, now func() time.Time) (*CA, bool, error) {
	if td.IsZero() {
		return nil, false, errors.New("issuer: no trust domain")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("issuer: CA folder: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, false, fmt.Errorf("issuer: lock CA folder: %w", err)
	}
	defer unlock()
	ca, err := loadCA(dir, td, now)
	if err == nil || !errors.Is(err, errNoCA) {
		return ca, false, err
	}
	if ttl <= 0 {
		return nil, false, fmt.Errorf("issuer: CA lifetime %v: must be positive", ttl)
	}
	ca, err = createCA(dir, td, ttl, now)
	return ca, err == nil, err
}

// errNoCA: the folder holds no CA certificate (a key alone is what a crash
// between the two renames leaves, and is replaced).
var errNoCA = errors.New("no CA")

func loadCA(dir string, td spiffeid.TrustDomain, now func() time.Time) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoCA
	}
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	cert, err := parseCACert(certPEM, td, now())
	if err != nil {
		return nil, fmt.Errorf("issuer: %s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("issuer: %s: %w", keyPath, err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(cert.PublicKey) {
		return nil, fmt.Errorf("issuer: %s: the key does not match the certificate in %s", keyPath, certPath)
	}
	return &CA{td: td, cert: cert, key: key, now: now}, nil
}

func parseCACert(data []byte, td spiffeid.TrustDomain, now time.Time) (*x509.Certificate, error) {
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
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("the CA expired at %s; remove its folder to create a new one",
			cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("the CA is not valid before %s; is the clock right?",
			cert.NotBefore.UTC().Format(time.RFC3339))
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

func createCA(dir string, td spiffeid.TrustDomain, ttl time.Duration, now func() time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := now()
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
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	// The key goes first: the certificate's arrival is what makes a CA.
	if err := writeFileAtomic(filepath.Join(dir, CAKeyFile), pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CACertFile), pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	return &CA{td: td, cert: cert, key: key, now: now}, nil
}

// TrustDomain is the trust domain the CA issues for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate is the CA certificate. The caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns the trust domain's X.509 bundle: the CA certificate. Each
// call returns a new Bundle the caller may change.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
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
