package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// identityTempDir is a temporary folder with a short name, for unix sockets
// (at most 107 bytes of path).
func identityTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pillion-id-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestIdentityBadFlags: each bad flag exits 2 with one line naming it, and
// neither the CA folder nor any socket is created.
func TestIdentityBadFlags(t *testing.T) {
	tmp := identityTempDir(t)
	ca, sock := filepath.Join(tmp, "ca"), filepath.Join(tmp, "s.sock")
	long := "/" + strings.Repeat("s", 107)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "--socket: missing: give at least one socket to serve on"},
		{[]string{"--socket=" + sock + "=spiffe://other.org/a"},
			"--socket " + sock + "=spiffe://other.org/a: the ID is not in trust domain cluster.local"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local"},
			"--socket " + sock + "=spiffe://cluster.local: the ID names the trust domain, not a workload (" + identityIDExample + ")"},
		{[]string{"--socket=" + sock + "=web"},
			"--socket " + sock + "=web: not a SPIFFE ID (" + identityIDExample + "): scheme is missing or invalid"},
		{[]string{"--socket==spiffe://cluster.local/a"}, "--socket =spiffe://cluster.local/a: no path"},
		{[]string{"--socket=" + long + "=spiffe://cluster.local/a"},
			"--socket " + long + "=spiffe://cluster.local/a: the path is 108 bytes, more than the 107 a unix socket allows"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--socket=" + sock + "/"},
			"--socket " + sock + "/: " + sock + " is given twice"},
		{[]string{"--socket=" + sock}, "--socket " + sock + ": no =SPIFFE-ID, so callers are told apart by UID, but no --uid is given"},
		{[]string{"--socket=" + sock, "--uid=abc=spiffe://cluster.local/a"}, `--uid abc=spiffe://cluster.local/a: "abc" is not a number`},
		{[]string{"--socket=" + sock, "--uid=-1=spiffe://cluster.local/a"}, `--uid -1=spiffe://cluster.local/a: "-1" is not a number`},
		{[]string{"--socket=" + sock, "--uid=1337"}, "--uid 1337: want UID=SPIFFE-ID"},
		{[]string{"--socket=" + sock, "--uid=1337=spiffe://other.org/a"},
			"--uid 1337=spiffe://other.org/a: the ID is not in trust domain cluster.local"},
		{[]string{"--socket=" + sock, "--uid=7=spiffe://cluster.local/a", "--uid=7=spiffe://cluster.local/b"},
			"--uid 7=spiffe://cluster.local/b: UID 7 is given twice"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--uid=7=spiffe://cluster.local/b"},
			"--uid: every --socket has its own ID; add a --socket PATH without =SPIFFE-ID to serve IDs by UID"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--svid-ttl=1s"}, "--svid-ttl: 1s: must be at least 2s"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--ca-ttl=0s"}, "--ca-ttl: 0s: must be positive"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--ca-ttl=8s", "--svid-ttl=2001ms"},
			"--svid-ttl: 2.001s: must be at most a quarter of --ca-ttl (8s): a CA signs until three quarters of its lifetime, and no SVID may outlive its CA"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--ca-ttl=3h59m"},
			"--svid-ttl: 1h0m0s: must be at most a quarter of --ca-ttl (3h59m0s): a CA signs until three quarters of its lifetime, and no SVID may outlive its CA"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--trust-domain=Bad_Domain"},
			"--trust-domain Bad_Domain: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		{[]string{"--socket=" + sock + "=spiffe://cluster.local/a", "--log-level=loud"},
			`invalid value "loud" for flag -log-level: unrecognized level: "loud"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append([]string{"identity", "--dir=" + ca}, tt.args...)
			code, stdout, stderr := runCmd(args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			want := "pillion identity: " + tt.want + "\nRun 'pillion identity --help' for usage.\n"
			if stderr != want {
				t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
			}
			if stdout != "" {
				t.Errorf("stdout = %q", stdout)
			}
			if names := identityDirNames(t, tmp); len(names) != 0 {
				t.Errorf("created %v", names)
			}
		})
	}
}

func identityDirNames(t *testing.T, dir string) []string {
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

func TestIdentityHelp(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"identity", "--help"}, []string{"Usage: pillion identity [flags]", "Examples:", "-socket", "-uid",
			"-svid-ttl", "-ca-ttl", "-trust-domain", "-dir", "-log-level", `(default "/var/lib/pillion/identity")`, "identity issue"}},
		{[]string{"identity", "issue", "--help"}, []string{"Usage: pillion identity issue [flags]", "Example:",
			"svid.pem", "svid-key.pem", "bundle.pem", "-id", "-out", "-ttl", `(default "cluster.local")`}},
		{[]string{"--help"}, []string{"  identity  serve SPIFFE identities"}},
	} {
		code, stdout, _ := runCmd(tt.args...)
		if code != 0 {
			t.Errorf("%v: exit %d, want 0", tt.args, code)
		}
		for _, w := range tt.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("%v lacks %q", tt.args, w)
			}
		}
	}
}

// TestIdentityIssue: the files are what go-spiffe's file loaders read, and a
// second issue uses the same CA.
func TestIdentityIssue(t *testing.T) {
	tmp := t.TempDir()
	ca, out := filepath.Join(tmp, "ca"), filepath.Join(tmp, "out")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	issue := func() (*x509svid.SVID, *x509bundle.Bundle, string) {
		t.Helper()
		code, stdout, stderr := runCmd("identity", "issue", "--dir="+ca, "--id="+id.String(), "--out="+out, "--ttl=2h")
		if code != 0 || stderr != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		svid, err := x509svid.Load(filepath.Join(out, "svid.pem"), filepath.Join(out, "svid-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := x509bundle.Load(id.TrustDomain(), filepath.Join(out, "bundle.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
			t.Errorf("the SVID does not verify against bundle.pem: %v", err)
		}
		if svid.ID != id {
			t.Errorf("svid.pem is for %v, want %v", svid.ID, id)
		}
		return svid, bundle, stdout
	}
	first, bundle, stdout := issue()
	leaf := first.Certificates[0]
	if life := time.Until(leaf.NotAfter); life > 2*time.Hour || life < 2*time.Hour-time.Minute {
		t.Errorf("the SVID lives %v, want 2h", life)
	}
	if !strings.HasPrefix(stdout, "created a CA for cluster.local in "+ca+", expires ") {
		t.Errorf("first run's stdout does not say the CA was created:\n%s", stdout)
	}
	for _, w := range []string{"issued " + id.String() + ", serial " + leaf.SerialNumber.Text(16) + ", expires " + rfc3339(leaf.NotAfter) + "\n",
		"  " + filepath.Join(out, "svid.pem") + "\n", "  " + filepath.Join(out, "svid-key.pem") + "\n", "  " + filepath.Join(out, "bundle.pem") + "\n"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, stdout)
		}
	}
	for name, want := range map[string]os.FileMode{"svid.pem": 0o644, "svid-key.pem": 0o600, "bundle.pem": 0o644} {
		fi, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if names := identityDirNames(t, out); len(names) != 3 {
		t.Errorf("--out holds %v, want the three files alone", names)
	}

	second, bundle2, stdout := issue()
	if strings.Contains(stdout, "created a CA") {
		t.Errorf("second run created a CA:\n%s", stdout)
	}
	if !bundle2.Equal(bundle) {
		t.Error("second run wrote another bundle")
	}
	if second.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("second run wrote the same SVID")
	}
}

func TestIdentityIssueBadFlags(t *testing.T) {
	tmp := t.TempDir()
	ca, out := filepath.Join(tmp, "ca"), filepath.Join(tmp, "out")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--out=" + out}, "--id: missing: the SPIFFE ID to issue (" + identityIDExample + ")"},
		{[]string{"--id=spiffe://cluster.local/a"}, "--out: missing: the folder to write the SVID to"},
		{[]string{"--id=spiffe://other.org/a", "--out=" + out}, "--id spiffe://other.org/a: the ID is not in trust domain cluster.local"},
		{[]string{"--id=spiffe://cluster.local/a", "--out=" + out, "--ttl=0s"}, "--ttl: 0s: must be positive"},
		{[]string{"--id=spiffe://cluster.local/a", "--out=" + out, "extra"}, `unexpected argument "extra"`},
		{[]string{"--nope"}, "flag provided but not defined: -nope"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(append([]string{"identity", "issue", "--dir=" + ca}, tt.args...)...)
			want := "pillion identity: issue: " + tt.want + "\nRun 'pillion identity --help' for usage.\n"
			if code != 2 || stderr != want || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr\n%s\nwant exit 2 and\n%s", code, stdout, stderr, want)
			}
			if names := identityDirNames(t, tmp); len(names) != 0 {
				t.Errorf("created %v", names)
			}
		})
	}
}

// startIdentity runs `pillion identity` with args and waits until sock is
// served. stop ends it and returns its exit code and stderr; the test's end
// does too.
func startIdentity(t *testing.T, sock string, args ...string) (stop func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"identity"}, args...), &stdout, &stderr) }()
	code, stopped := 0, false
	stop = func() (int, string) {
		if !stopped {
			cancel()
			code, stopped = <-done, true
		}
		return code, stderr.String()
	}
	t.Cleanup(func() { stop() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return stop
		}
		select {
		case code := <-done:
			stopped = true
			t.Fatalf("exited %d before serving: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket after 10s")
		}
	}
}

// TestIdentityServe runs `pillion identity` until its context ends: a
// go-spiffe client gets its SVID from the socket, and the socket is gone
// after.
func TestIdentityServe(t *testing.T) {
	tmp := identityTempDir(t)
	ca, sock := filepath.Join(tmp, "ca"), filepath.Join(tmp, "run", "web.sock")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	stop := startIdentity(t, sock, "--dir="+ca, "--socket="+sock+"="+id.String(), "--svid-ttl=1m")
	fetchCtx, fetchCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fetchCancel()
	svid, err := workloadapi.FetchX509SVID(fetchCtx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Errorf("got %v, want %v", svid.ID, id)
	}
	if life := time.Until(svid.Certificates[0].NotAfter); life > time.Minute {
		t.Errorf("the SVID lives %v, want --svid-ttl=1m", life)
	}
	code, logs := stop()
	if code != 0 {
		t.Errorf("exit %d, want 0: %s", code, logs)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after exit: %v, want it removed", err)
	}
	for _, w := range []string{`"msg":"created a CA"`, `"msg":"serving the Workload API","socket":"` + sock + `","spiffe_id":"` + id.String() + `"`,
		`"msg":"issued an X.509-SVID"`, `"msg":"stopped serving the Workload API"`} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %s:\n%s", w, logs)
		}
	}

	// The CA folder now holds a CA of cluster.local: another trust domain
	// is refused with the file and the reason.
	code, _, errOut := runCmd("identity", "--dir="+ca, "--trust-domain=other.org", "--socket="+sock+"=spiffe://other.org/a")
	want := "pillion identity: issuer: " + filepath.Join(ca, "ca.pem") + ": the CA is for trust domain cluster.local, not other.org\n"
	if code != 1 || errOut != want {
		t.Errorf("exit %d, stderr\n%s\nwant exit 1 and\n%s", code, errOut, want)
	}
}

// x509Updates hands go-spiffe's X.509 context updates to a test.
type x509Updates chan *workloadapi.X509Context

func (u x509Updates) OnX509ContextUpdate(c *workloadapi.X509Context) { u <- c }
func (x509Updates) OnX509ContextWatchError(error)                    {}

// TestIdentityRotation runs `pillion identity` with a CA of 8s and SVIDs of
// 2s under go-spiffe's Workload API client: the bundle grows to the next CA
// (at 4s), the SVID is then the new CA's (at 6s, the new CA having been
// trusted for 2s), the old CA then leaves the bundle (at 8s), and every
// update's SVID verifies against the bundle it came with.
func TestIdentityRotation(t *testing.T) {
	tmp := identityTempDir(t)
	sock := filepath.Join(tmp, "web.sock")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	stop := startIdentity(t, sock, "--dir="+filepath.Join(tmp, "ca"), "--socket="+sock+"="+id.String(),
		"--ca-ttl=8s", "--svid-ttl=2s")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	updates := make(x509Updates, 64)
	go func() { _ = client.WatchX509Context(ctx, updates) }()

	var (
		first, next *x509.Certificate // the first CA, the one that replaces it
		trustedAt   time.Time         // when next reached the client
		activated   bool
	)
	for n := 1; ; n++ {
		var c *workloadapi.X509Context
		select {
		case c = <-updates:
		case <-ctx.Done():
			t.Fatalf("update %d: none within 30s (next CA seen %v, signing %v)", n, next != nil, activated)
		}
		now := time.Now()
		svid := c.DefaultSVID()
		_, chains, err := x509svid.Verify(svid.Certificates, c.Bundles)
		if err != nil {
			t.Fatalf("update %d: the SVID does not verify against the bundle it came with: %v", n, err)
		}
		b, _ := c.Bundles.Get(id.TrustDomain())
		cas, signer := b.X509Authorities(), chains[0][len(chains[0])-1]
		if first == nil {
			if len(cas) != 1 {
				t.Fatalf("first bundle: %d CAs, want 1", len(cas))
			}
			first = cas[0]
		}
		if next == nil && len(cas) == 2 {
			if !cas[0].Equal(first) {
				t.Fatal("the bundle grew and lost the first CA")
			}
			next, trustedAt = cas[1], now
		}
		switch {
		case signer.Equal(first):
			if activated {
				t.Fatalf("update %d: an SVID of the old CA after the new one signed", n)
			}
		case next == nil || !signer.Equal(next):
			t.Fatalf("update %d: an SVID of a CA the client never trusted before", n)
		case !activated:
			activated = true
			if d := now.Sub(trustedAt); d < time.Second {
				t.Errorf("the new CA signed %v after it reached the client, want about 2s (--ca-ttl/4)", d)
			}
		}
		if activated && !slices.ContainsFunc(cas, first.Equal) {
			break // the first CA expired and left the bundle
		}
	}
	code, logs := stop()
	if code != 0 {
		t.Errorf("exit %d: %s", code, logs)
	}
	for _, w := range []string{`"msg":"CA prepared"`, `"msg":"CA activated"`, `"msg":"CA retired","serial":"` + first.SerialNumber.Text(16) + `"`} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %s:\n%s", w, logs)
		}
	}
}
