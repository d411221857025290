package issuer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("cluster.local")
	// t0 is whole seconds: certificates keep no finer time.
	t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func clock(t time.Time) func() time.Time { return func() time.Time { return t } }

func mustOpen(t *testing.T, dir string, td spiffeid.TrustDomain, now time.Time) *CA {
	t.Helper()
	ca, _, err := openCA(dir, td, 24*time.Hour, clock(now))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestOpenCACreatesThenLoads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, created, err := openCA(dir, testTD, 48*time.Hour, clock(t0))
	if err != nil || !created {
		t.Fatalf("first open: created %v, err %v; want a new CA", created, err)
	}
	c := ca.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA: IsCA %v, basic constraints %v, key usage %v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("CA URI SANs %v, want [spiffe://cluster.local]", c.URIs)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", c.PublicKey)
	}
	if !c.NotAfter.Equal(t0.Add(48 * time.Hour)) {
		t.Errorf("CA NotAfter %v, want %v", c.NotAfter, t0.Add(48*time.Hour))
	}
	for name, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{CAKeyFile, CACertFile}) {
		t.Errorf("CA folder holds %v, want just the two files", names)
	}

	again, created, err := openCA(dir, testTD, time.Hour, clock(t0.Add(time.Hour)))
	if err != nil || created {
		t.Fatalf("second open: created %v, err %v; want the CA loaded", created, err)
	}
	if !bytes.Equal(again.Certificate().Raw, c.Raw) {
		t.Error("reloaded CA certificate differs from the one created")
	}
	if _, err := again.Issue(spiffeid.RequireFromPath(testTD, "/a"), time.Hour); err != nil {
		t.Errorf("reloaded CA cannot issue: %v", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestOpenCAErrors: every broken CA folder is refused with the file and the
// reason, and left as it was.
func TestOpenCAErrors(t *testing.T) {
	other := t.TempDir()
	mustOpen(t, other, testTD, t0)
	otherKey, err := os.ReadFile(filepath.Join(other, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		setup func(dir string)
		now   time.Time
		want  string // DIR stands for the folder
	}{
		{"other trust domain", func(dir string) {
			mustOpen(t, dir, spiffeid.RequireTrustDomainFromString("other.org"), t0)
		}, t0, "issuer: DIR/ca.pem: the CA is for trust domain other.org, not cluster.local"},
		{"key of another CA", func(dir string) {
			mustOpen(t, dir, testTD, t0)
			write(t, filepath.Join(dir, CAKeyFile), otherKey)
		}, t0, "issuer: DIR/ca-key.pem: the key does not match the certificate in DIR/ca.pem"},
		{"certificate not PEM", func(dir string) {
			mustOpen(t, dir, testTD, t0)
			write(t, filepath.Join(dir, CACertFile), []byte("not a certificate\n"))
		}, t0, "issuer: DIR/ca.pem: no PEM CERTIFICATE block"},
		{"certificate PEM of garbage", func(dir string) {
			mustOpen(t, dir, testTD, t0)
			write(t, filepath.Join(dir, CACertFile), pemBlock("CERTIFICATE", []byte("garbage")))
		}, t0, "issuer: DIR/ca.pem: parse certificate: x509: malformed certificate"},
		{"key not PEM", func(dir string) {
			mustOpen(t, dir, testTD, t0)
			write(t, filepath.Join(dir, CAKeyFile), []byte("-----BEGIN PRIV"))
		}, t0, `issuer: DIR/ca-key.pem: no PEM "PRIVATE KEY" block`},
		{"key missing", func(dir string) {
			mustOpen(t, dir, testTD, t0)
			if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
				t.Fatal(err)
			}
		}, t0, "issuer: CA key: open DIR/ca-key.pem: no such file or directory"},
		{"expired", func(dir string) { mustOpen(t, dir, testTD, t0) }, t0.Add(25 * time.Hour),
			"issuer: DIR/ca.pem: the CA expired at 2030-01-03T03:04:05Z; remove its folder to create a new one"},
		{"a leaf, not a CA", func(dir string) {
			ca := mustOpen(t, dir, testTD, t0)
			svid, err := ca.Issue(spiffeid.RequireFromPath(testTD, "/a"), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, CACertFile), pemBlock("CERTIFICATE", svid.Certificates[0].Raw))
		}, t0, "issuer: DIR/ca.pem: not a CA certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(dir)
			before := snapshot(t, dir)
			_, _, err := openCA(dir, testTD, time.Hour, clock(tt.now))
			want := strings.ReplaceAll(tt.want, "DIR", dir)
			if err == nil || err.Error() != want {
				t.Errorf("error %v\nwant  %s", err, want)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("the CA folder changed:\n%s\nwas\n%s", after, before)
			}
		})
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, name := range dirNames(t, dir) {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		b.WriteString(name + ":" + string(data) + "\n")
	}
	return b.String()
}

// TestOpenCAOrphanKey: a key without a certificate, what a crash between the
// two renames leaves, is replaced by a new CA.
func TestOpenCAOrphanKey(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, CAKeyFile), []byte("left by a crash"))
	ca, created, err := openCA(dir, testTD, time.Hour, clock(t0))
	if err != nil || !created {
		t.Fatalf("created %v, err %v; want a new CA", created, err)
	}
	if _, _, err := openCA(dir, testTD, time.Hour, clock(t0)); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := ca.Issue(spiffeid.RequireFromPath(testTD, "/a"), time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCAConcurrent: processes starting together on an empty folder agree
// on one CA.
func TestOpenCAConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	const n = 8
	var (
		wg      sync.WaitGroup
		certs   [n][]byte
		created [n]bool
	)
	for i := range n {
		wg.Go(func() {
			ca, c, err := OpenCA(dir, testTD, time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			certs[i], created[i] = ca.Certificate().Raw, c
		})
	}
	wg.Wait()
	onDisk := mustOpen(t, dir, testTD, time.Now()).Certificate().Raw
	creators := 0
	for i := range n {
		if !bytes.Equal(certs[i], onDisk) {
			t.Errorf("opener %d got a CA other than the one on disk", i)
		}
		if created[i] {
			creators++
		}
	}
	if creators != 1 {
		t.Errorf("%d openers created a CA, want 1", creators)
	}
}

func TestIssue(t *testing.T) {
	ca := mustOpen(t, t.TempDir(), testTD, t0)
	id := spiffeid.RequireFromPath(testTD, "/ns/shop/sa/web")
	svid, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Through the wire format and back, as a Workload API client sees it.
	certDER, keyDER, err := svid.MarshalRaw()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509svid.ParseRaw(certDER, keyDER)
	if err != nil {
		t.Fatalf("go-spiffe refuses the SVID: %v", err)
	}
	gotID, chains, err := x509svid.Verify(parsed.Certificates, ca.Bundle(), x509svid.WithTime(t0))
	if err != nil {
		t.Fatalf("the SVID does not verify against the bundle: %v", err)
	}
	if gotID != id || parsed.ID != id {
		t.Errorf("ID %v (verified %v), want %v", parsed.ID, gotID, id)
	}
	if len(parsed.Certificates) != 1 || len(chains) != 1 || len(chains[0]) != 2 {
		t.Errorf("chain: %d certificates, verified chains %d; want the leaf alone, chaining to the CA", len(parsed.Certificates), len(chains))
	}
	leaf := parsed.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs %v, want exactly %v", leaf.URIs, id)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA %v, basic constraints %v; want a valid non-CA constraint", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %v, want digital signature", leaf.KeyUsage)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(leaf.ExtKeyUsage, want) {
		t.Errorf("extended key usage %v, want %v", leaf.ExtKeyUsage, want)
	}
	if !leaf.NotBefore.Equal(t0.Add(-backdate)) || !leaf.NotAfter.Equal(t0.Add(time.Hour)) {
		t.Errorf("valid %v to %v, want %v to %v", leaf.NotBefore, leaf.NotAfter, t0.Add(-backdate), t0.Add(time.Hour))
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v: want a random positive 128-bit number", leaf.SerialNumber)
	}

	second, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if second.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two SVIDs share a serial number")
	}
	if second.PrivateKey.Public().(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Error("two SVIDs share a key")
	}
}

// TestIssueCappedAtCAExpiry: an SVID never outlives its CA.
func TestIssueCappedAtCAExpiry(t *testing.T) {
	dir := t.TempDir()
	mustOpen(t, dir, testTD, t0) // valid 24h
	ca := mustOpen(t, dir, testTD, t0.Add(23*time.Hour))
	svid, err := ca.Issue(spiffeid.RequireFromPath(testTD, "/a"), 4*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := svid.Certificates[0].NotAfter, ca.Certificate().NotAfter; !got.Equal(want) {
		t.Errorf("SVID NotAfter %v, want the CA's %v", got, want)
	}
}

func TestIssueRefuses(t *testing.T) {
	dir := t.TempDir()
	ca := mustOpen(t, dir, testTD, t0)
	for _, tt := range []struct {
		name string
		id   spiffeid.ID
		ttl  time.Duration
		now  time.Time
		want string
	}{
		{"other trust domain", spiffeid.RequireFromString("spiffe://other.org/ns/a/sa/b"), time.Hour, t0,
			"issuer: spiffe://other.org/ns/a/sa/b is not in trust domain cluster.local"},
		{"trust domain ID", testTD.ID(), time.Hour, t0,
			`issuer: "spiffe://cluster.local" is not a workload ID (spiffe://cluster.local/path...)`},
		{"zero ID", spiffeid.ID{}, time.Hour, t0, `issuer: "" is not a workload ID (spiffe://cluster.local/path...)`},
		{"zero lifetime", spiffeid.RequireFromPath(testTD, "/a"), 0, t0, "issuer: SVID lifetime 0s: must be positive"},
		{"CA expired", spiffeid.RequireFromPath(testTD, "/a"), time.Hour, t0.Add(48 * time.Hour),
			"issuer: the CA expired at 2030-01-03T03:04:05Z"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ca := *ca
			ca.now = clock(tt.now)
			svid, err := ca.Issue(tt.id, tt.ttl)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v, want %s", err, tt.want)
			}
			if svid != nil {
				t.Error("an SVID came with the error")
			}
		})
	}
}
