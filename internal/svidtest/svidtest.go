// Package svidtest gives tests SPIFFE identities: a fixed Source, SVIDs from
// a throw-away CA, and SVIDs with the validity a test needs (expired, not
// yet valid), which no issuer hands out.
package svidtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/pillionmesh/pillion/mtls/issuer"
)

// Source is an mtls.Source with a fixed SVID (or error) and bundles.
type Source struct {
	SVID    *x509svid.SVID
	Err     error // returned by GetX509SVID when set
	Bundles *x509bundle.Set
}

// GetX509SVID returns s.SVID, or s.Err.
func (s Source) GetX509SVID() (*x509svid.SVID, error) {
	if s.Err != nil {
		return nil, s.Err
	}
	return s.SVID, nil
}

// GetX509BundleForTrustDomain returns td's bundle from s.Bundles.
func (s Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.Bundles.GetX509BundleForTrustDomain(td)
}

// CA opens (or creates) the CA of trust domain td kept in dir; a new
// folder when dir is "".
func CA(t testing.TB, dir, td string) *issuer.CA {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ca, _, err := issuer.OpenCA(dir, spiffeid.RequireTrustDomainFromString(td), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Issue issues an SVID for id, valid for an hour.
func Issue(t testing.TB, ca *issuer.CA, id string) *x509svid.SVID {
	t.Helper()
	s, err := ca.Issue(spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SourceFor is a Source with an SVID for id from ca, trusting ca.
func SourceFor(t testing.TB, ca *issuer.CA, id string) Source {
	t.Helper()
	return Source{SVID: Issue(t, ca, id), Bundles: x509bundle.NewSet(ca.Bundle())}
}

// IssueAt signs an SVID for id valid from notBefore to notAfter with the
// CA kept in dir (issuer.CACertFile and issuer.CAKeyFile).
func IssueAt(t testing.TB, dir, id string, notBefore, notAfter time.Time) *x509svid.SVID {
	t.Helper()
	caCert, caKey := loadCA(t, dir)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{sid.URL()},
		NotBefore: notBefore, NotAfter: notAfter, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
}

func loadCA(t testing.TB, dir string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var blocks [2]*pem.Block
	for i, name := range []string{issuer.CACertFile, issuer.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if blocks[i], _ = pem.Decode(b); blocks[i] == nil {
			t.Fatalf("svidtest: no PEM in %s", name)
		}
	}
	cert, err := x509.ParseCertificate(blocks[0].Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(blocks[1].Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key.(crypto.Signer)
}
