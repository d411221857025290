package mtls_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

// writeSVID writes svid and ca's bundle as files in dir, as `pillion
// identity issue` does, and returns their names.
func writeSVID(t *testing.T, dir string, svid *x509svid.SVID, ca *issuer.CA) mtls.Files {
	t.Helper()
	f, err := issuer.WriteFiles(dir, svid, ca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	return mtls.Files{Cert: f.SVID, Key: f.Key, Bundle: f.Bundle}
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

func TestFileSourceLoadErrors(t *testing.T) {
	ca := svidtest.CA(t, "", "cluster.local")
	other := svidtest.CA(t, "", "cluster.local") // same trust domain, another CA
	dir := t.TempDir()
	good := writeSVID(t, dir, svidtest.Issue(t, ca, "spiffe://cluster.local/a"), ca)
	otherFiles := writeSVID(t, t.TempDir(), svidtest.Issue(t, other, "spiffe://cluster.local/a"), other)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files mtls.Files
		want  []string // in the error
	}{
		{"missing cert", mtls.Files{Cert: filepath.Join(dir, "nope.pem"), Key: good.Key, Bundle: good.Bundle}, []string{"nope.pem", "no such file"}},
		{"key of another SVID", mtls.Files{Cert: good.Cert, Key: otherFiles.Key, Bundle: good.Bundle}, []string{good.Cert, otherFiles.Key, "private key"}},
		{"bundle of another CA", mtls.Files{Cert: good.Cert, Key: good.Key, Bundle: otherFiles.Bundle}, []string{good.Cert, "is not signed by a CA of " + otherFiles.Bundle}},
		{"garbage cert", mtls.Files{Cert: garbage, Key: good.Key, Bundle: good.Bundle}, []string{garbage}},
		{"garbage bundle", mtls.Files{Cert: good.Cert, Key: good.Key, Bundle: garbage}, []string{garbage}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mtls.NewFileSource(tc.files, 0, zap.NewNop())
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestFileSourceRotation(t *testing.T) {
	ca := svidtest.CA(t, "", "cluster.local")
	dir := t.TempDir()
	first := svidtest.Issue(t, ca, "spiffe://cluster.local/a")
	files := writeSVID(t, dir, first, ca)
	core, logs := observer.New(zap.InfoLevel)
	src, err := mtls.NewFileSource(files, 20*time.Millisecond, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	got, _ := src.GetX509SVID()
	if serial(got) != serial(first) || src.Ready() != nil {
		t.Fatalf("serial %s, ready %v; want %s, ready", serial(got), src.Ready(), serial(first))
	}
	if b, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("cluster.local")); err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle: %v, %v", b, err)
	}

	// Half a rotation: the new certificate with the old key. It must not
	// be taken.
	second := svidtest.Issue(t, ca, "spiffe://cluster.local/a")
	certPEM, keyPEM, err := second.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.Cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.FilterMessageSnippet("do not load").Len() > 0 })
	if got, _ := src.GetX509SVID(); serial(got) != serial(first) {
		t.Fatalf("took a certificate without its key: serial %s", serial(got))
	}
	// The key arrives: the new SVID is taken.
	if err := os.WriteFile(files.Key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { got, _ := src.GetX509SVID(); return serial(got) == serial(second) })
}

// TestFileSourceUnreadable: files that cannot be read are logged once,
// not every poll, and the SVID in use stays.
func TestFileSourceUnreadable(t *testing.T) {
	ca := svidtest.CA(t, "", "cluster.local")
	first := svidtest.Issue(t, ca, "spiffe://cluster.local/a")
	files := writeSVID(t, t.TempDir(), first, ca)
	core, logs := observer.New(zap.InfoLevel)
	src, err := mtls.NewFileSource(files, 20*time.Millisecond, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := os.Remove(files.Key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return logs.FilterMessageSnippet("reading the SVID files").Len() > 0 })
	time.Sleep(200 * time.Millisecond) // ten more polls
	if n := logs.FilterMessageSnippet("reading the SVID files").Len(); n != 1 {
		t.Errorf("a missing key was logged %d times, want once", n)
	}
	if got, _ := src.GetX509SVID(); serial(got) != serial(first) {
		t.Errorf("the SVID changed with its key missing: serial %s", serial(got))
	}
}

// TestFileSourceReload: Reload (SIGHUP) takes new files at once, with no
// poll.
func TestFileSourceReload(t *testing.T) {
	ca := svidtest.CA(t, "", "cluster.local")
	files := writeSVID(t, t.TempDir(), svidtest.Issue(t, ca, "spiffe://cluster.local/a"), ca)
	src, err := mtls.NewFileSource(files, time.Hour, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	second := svidtest.Issue(t, ca, "spiffe://cluster.local/a")
	certPEM, keyPEM, err := second.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{files.Cert: certPEM, files.Key: keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src.Reload()
	if got, _ := src.GetX509SVID(); serial(got) != serial(second) {
		t.Errorf("after Reload: serial %s, want %s", serial(got), serial(second))
	}
}

func TestFileSourceExpired(t *testing.T) {
	caDir := t.TempDir()
	ca := svidtest.CA(t, caDir, "cluster.local")
	now := time.Now()
	expired := svidtest.IssueAt(t, caDir, "spiffe://cluster.local/a", now.Add(-5*time.Second), now.Add(-time.Second))
	src, err := mtls.NewFileSource(writeSVID(t, t.TempDir(), expired, ca), 0, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Ready(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Ready = %v; want an error saying the SVID expired", err)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
	}
}
