package issuer

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// caLife is the CA lifetime of the schedule tests.
const caLife = 8 * time.Hour

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// names gives the CAs of a test letters in the order they appear.
type names map[string]string

func (n names) of(c *x509.Certificate) string {
	if c == nil {
		return "-"
	}
	k := string(c.Raw)
	if _, ok := n[k]; !ok {
		n[k] = string(rune('A' + len(n)))
	}
	return n[k]
}

// view is a State in letters, with the folder's files.
type view struct {
	Active, Previous, Next string
	Bundle                 []string
	Files                  []string
}

func (n names) view(t *testing.T, dir string, s *State) view {
	t.Helper()
	v := view{Active: n.of(s.Active.cert), Previous: n.of(s.Previous), Next: n.of(s.Next), Files: dirNames(t, dir)}
	for _, c := range s.Bundle {
		v.Bundle = append(v.Bundle, n.of(c))
	}
	// ca.pem and ca-key.pem are the active CA's, as svidtest.IssueAt reads
	// them.
	f := folder{dir: dir, td: testTD}
	cert, err := f.readCert(CACertFile)
	if err != nil || cert == nil || !cert.Equal(s.Active.cert) {
		t.Errorf("ca.pem is not the active CA (err %v)", err)
	} else if _, err := f.readKey(CAKeyFile, CACertFile, cert); err != nil {
		t.Error(err)
	}
	return v
}

// TestRotationSchedule: prepare at L/2, activate at 3L/4, retire the
// previous CA when it expires; the State, the files and the logs at each
// step, and every active CA's SVID verifies against its State's bundle.
func TestRotationSchedule(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: t0}
	core, logs := observer.New(zap.InfoLevel)
	a, created, err := openAuthority(dir, testTD, caLife, zap.New(core), clk.now, nil)
	if err != nil || !created {
		t.Fatalf("created %v, err %v", created, err)
	}
	const (
		key, cert, nextKey, next, prev = CAKeyFile, CACertFile, NextCAKeyFile, NextCACertFile, PreviousCACertFile
	)
	n := names{}
	for _, tt := range []struct {
		at      time.Duration
		want    view
		changed bool
		logs    []string // "message letter"
	}{
		{0, view{"A", "-", "-", []string{"A"}, []string{key, cert}}, false, nil},
		{4*time.Hour - time.Second, view{"A", "-", "-", []string{"A"}, []string{key, cert}}, false, nil},
		{4 * time.Hour, view{"A", "-", "B", []string{"A", "B"}, []string{key, nextKey, next, cert}}, true,
			[]string{"CA prepared B"}},
		{6*time.Hour - time.Second, view{"A", "-", "B", []string{"A", "B"}, []string{key, nextKey, next, cert}}, false, nil},
		{6 * time.Hour, view{"B", "A", "-", []string{"A", "B"}, []string{key, prev, cert}}, true,
			[]string{"CA activated B"}},
		{8*time.Hour - time.Second, view{"B", "A", "-", []string{"A", "B"}, []string{key, prev, cert}}, false, nil},
		// A expires; B, prepared at 4h, is half-way: C is prepared.
		{8 * time.Hour, view{"B", "-", "C", []string{"B", "C"}, []string{key, nextKey, next, cert}}, true,
			[]string{"CA retired A", "CA prepared C"}},
		{10 * time.Hour, view{"C", "B", "-", []string{"B", "C"}, []string{key, prev, cert}}, true,
			[]string{"CA activated C"}},
		{12 * time.Hour, view{"C", "-", "D", []string{"C", "D"}, []string{key, nextKey, next, cert}}, true,
			[]string{"CA retired B", "CA prepared D"}},
	} {
		before := a.Current()
		clk.set(t0.Add(tt.at))
		logs.TakeAll()
		if err := a.Tick(); err != nil {
			t.Fatalf("at %v: %v", tt.at, err)
		}
		st := a.Current()
		if diff := cmp.Diff(tt.want, n.view(t, dir, st)); diff != "" {
			t.Errorf("at %v (-want +got):\n%s", tt.at, diff)
		}
		select {
		case <-before.Changed():
			if !tt.changed {
				t.Errorf("at %v: Changed closed, but nothing changed", tt.at)
			}
		default:
			if tt.changed {
				t.Errorf("at %v: the State changed and Changed is still open", tt.at)
			}
		}
		var got []string
		for _, e := range logs.TakeAll() {
			c := map[string]*x509.Certificate{"CA prepared": st.Next, "CA activated": st.Active.cert, "CA retired": before.Previous}[e.Message]
			f := e.ContextMap()
			if c != nil && (f["serial"] != c.SerialNumber.Text(16) || !f["expires"].(time.Time).Equal(c.NotAfter)) {
				t.Errorf("at %v: %q logs serial %v expires %v, want %s, %v", tt.at, e.Message, f["serial"], f["expires"],
					c.SerialNumber.Text(16), c.NotAfter)
			}
			got = append(got, e.Message+" "+n.of(c))
		}
		if !slices.Equal(got, tt.logs) {
			t.Errorf("at %v: logs %q, want %q", tt.at, got, tt.logs)
		}
		svid, err := st.Active.Issue(spiffeid.RequireFromPath(testTD, "/a"), caLife/4)
		if err != nil {
			t.Fatalf("at %v: %v", tt.at, err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, st.X509Bundle(), x509svid.WithTime(clk.now())); err != nil {
			t.Errorf("at %v: the active CA's SVID does not verify against the bundle: %v", tt.at, err)
		}
		if got := svid.Certificates[0].NotAfter.Sub(clk.now()); got != caLife/4 {
			t.Errorf("at %v: an SVID of L/4 lives %v: cut short by its CA", tt.at, got)
		}
	}
}

// TestRotationAfterDowntime: a folder opened late takes the steps it
// missed, and never activates a CA peers have not had L/4 to fetch.
func TestRotationAfterDowntime(t *testing.T) {
	for _, tt := range []struct {
		name      string
		prepare   bool          // B was prepared at L/2, before the downtime
		reopen    time.Duration // when the folder is opened again
		want      view
		activates time.Duration // when the next CA takes over
	}{
		{"opened at 5L/8 without a next CA: B is prepared, activates L/4 later", false, 5 * time.Hour,
			view{"A", "-", "B", []string{"A", "B"}, nil}, 7 * time.Hour},
		{"opened at 7L/8 without a next CA: B is prepared, activates when A expires", false, 7 * time.Hour,
			view{"A", "-", "B", []string{"A", "B"}, nil}, 8 * time.Hour},
		{"A expired while B waited: B is activated, and C prepared as B is half-way", true, 9 * time.Hour,
			view{"B", "-", "C", []string{"B", "C"}, nil}, 11 * time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &fakeClock{t: t0}
			n := names{}
			a, _, err := openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			n.of(a.Current().Active.cert)
			if tt.prepare {
				clk.set(t0.Add(caLife / 2))
				if err := a.Tick(); err != nil {
					t.Fatal(err)
				}
				n.of(a.Current().Next)
			}
			clk.set(t0.Add(tt.reopen))
			a, _, err = openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := n.view(t, dir, a.Current())
			got.Files = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			for _, at := range []time.Duration{tt.activates - time.Second, tt.activates} {
				clk.set(t0.Add(at))
				if err := a.Tick(); err != nil {
					t.Fatal(err)
				}
				want := tt.want.Active
				if at == tt.activates {
					want = tt.want.Next
				}
				if active := n.of(a.Current().Active.cert); active != want {
					t.Errorf("at %v: active %s, want %s", at, active, want)
				}
			}
		})
	}

	t.Run("A and B expired: refused", func(t *testing.T) {
		dir := t.TempDir()
		clk := &fakeClock{t: t0}
		a, _, err := openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil)
		if err != nil {
			t.Fatal(err)
		}
		clk.set(t0.Add(caLife / 2))
		if err := a.Tick(); err != nil {
			t.Fatal(err)
		}
		clk.set(t0.Add(13 * time.Hour))
		_, _, err = openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil)
		want := "issuer: " + filepath.Join(dir, CACertFile) + ": the CA expired at 2030-01-02T11:04:05Z; remove its folder to create a new one"
		if err == nil || err.Error() != want {
			t.Errorf("error %v\nwant  %s", err, want)
		}
	})
}

var errCrash = errors.New("crash")

// TestRotationCrash stops the schedule before each change to the folder,
// as a crash would, then opens the folder as a restarted process does: it
// must load, sign with a CA the bundle before the crash held, keep every
// CA of that bundle still valid, and end where an uninterrupted run ends.
func TestRotationCrash(t *testing.T) {
	steps := []time.Duration{0, caLife / 2, 3 * caLife / 4, caLife, 5 * caLife / 4}
	const wantOps = 2 + 2 + 5 + 3 + 5 // create, prepare, activate, retire+prepare, activate
	var ops []string
	for k := 0; ; k++ {
		dir := t.TempDir()
		clk := &fakeClock{t: t0}
		n := 0
		var crashedAt string
		crash := func(op string) error {
			if k == 0 {
				ops = append(ops, op)
			}
			if n++; n == k {
				crashedAt = op
				return errCrash
			}
			return nil
		}
		var a *Authority
		for _, at := range steps {
			clk.set(t0.Add(at))
			var before *State
			var err error
			if a == nil {
				a, _, err = openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, crash)
			} else {
				before = a.Current()
				err = a.Tick()
			}
			if err == nil {
				continue
			}
			if !errors.Is(err, errCrash) {
				t.Fatalf("crash before op %d: at %v: %v", k, at, err)
			}
			// The restart: crash hook gone, same time.
			if a, _, err = openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil); err != nil {
				t.Fatalf("crash before %q at %v: the folder does not load: %v", crashedAt, at, err)
			}
			checkRestart(t, fmt.Sprintf("crash before %q at %v", crashedAt, at), before, a.Current(), clk.now())
		}
		// Where an uninterrupted run ends, CAs made again after a crash
		// aside: C (prepared at L) signs, B (prepared at L/2) is previous.
		st := a.Current()
		names{}.view(t, dir, st) // ca.pem and ca-key.pem are the active CA's
		if st.Next != nil || st.Previous == nil ||
			!st.Active.cert.NotAfter.Equal(t0.Add(2*caLife)) || !st.Previous.NotAfter.Equal(t0.Add(3*caLife/2)) ||
			!slices.EqualFunc(st.Bundle, []*x509.Certificate{st.Previous, st.Active.cert}, (*x509.Certificate).Equal) {
			t.Errorf("crash before op %d (%q): the run ends with active until %v, a previous CA %v, a next CA %v, %d CAs in the bundle",
				k, crashedAt, st.Active.cert.NotAfter, st.Previous != nil, st.Next != nil, len(st.Bundle))
		}
		if got, want := dirNames(t, dir), []string{CAKeyFile, PreviousCACertFile, CACertFile}; !slices.Equal(got, want) {
			t.Errorf("crash before op %d (%q): files %v, want %v", k, crashedAt, got, want)
		}
		if k > 0 && crashedAt == "" {
			break
		}
	}
	if len(ops) != wantOps {
		t.Errorf("the schedule made %d changes, want %d:\n%s", len(ops), wantOps, strings.Join(ops, "\n"))
	}
}

// checkRestart: after a crash during the tick from before, now is signed by
// a CA before trusted, and the CAs before trusted and valid still are.
func checkRestart(t *testing.T, what string, before, after *State, now time.Time) {
	t.Helper()
	if before == nil {
		return // the first CA: nobody trusted anything yet
	}
	if !slices.ContainsFunc(before.Bundle, after.Active.cert.Equal) {
		t.Errorf("%s: the active CA after the restart was not in the bundle before", what)
	}
	for _, c := range before.Bundle {
		if now.Before(c.NotAfter) && !slices.ContainsFunc(after.Bundle, c.Equal) {
			t.Errorf("%s: a valid CA of the bundle before is gone", what)
		}
	}
}

// TestLoadMidActivation: each folder an activation can leave loads, signs
// with the right CA, and is put straight by the next step.
func TestLoadMidActivation(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: t0}
	a, _, err := openAuthority(dir, testTD, caLife, zap.NewNop(), clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk.set(t0.Add(caLife / 2))
	if err := a.Tick(); err != nil {
		t.Fatal(err)
	}
	A, B := a.Current().Active.cert, a.Current().Next
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	aCert, aKey, bCert, bKey := read(CACertFile), read(CAKeyFile), read(NextCACertFile), read(NextCAKeyFile)
	for _, tt := range []struct {
		name   string
		files  map[string][]byte
		active *x509.Certificate
	}{
		{"previous written", map[string][]byte{PreviousCACertFile: aCert, CACertFile: aCert, CAKeyFile: aKey,
			NextCACertFile: bCert, NextCAKeyFile: bKey}, A},
		{"ca.pem replaced", map[string][]byte{PreviousCACertFile: aCert, CACertFile: bCert, CAKeyFile: aKey,
			NextCACertFile: bCert, NextCAKeyFile: bKey}, B},
		{"ca-key.pem replaced", map[string][]byte{PreviousCACertFile: aCert, CACertFile: bCert, CAKeyFile: bKey,
			NextCACertFile: bCert, NextCAKeyFile: bKey}, B},
		{"ca-next.pem removed", map[string][]byte{PreviousCACertFile: aCert, CACertFile: bCert, CAKeyFile: bKey,
			NextCAKeyFile: bKey}, B},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			for name, data := range tt.files {
				write(t, filepath.Join(d, name), data)
			}
			// Before the activation time: only what the crash left is
			// finished, nothing new is started.
			clk := &fakeClock{t: t0.Add(caLife/2 + time.Minute)}
			a, _, err := openAuthority(d, testTD, caLife, zap.NewNop(), clk.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			st := a.Current()
			if !st.Active.cert.Equal(tt.active) {
				t.Error("signs with the wrong CA")
			}
			if !slices.EqualFunc(st.Bundle, []*x509.Certificate{A, B}, (*x509.Certificate).Equal) {
				t.Errorf("bundle of %d CAs, want A and B", len(st.Bundle))
			}
			files := []string{CAKeyFile, PreviousCACertFile, CACertFile}
			if tt.active == A {
				files = []string{CAKeyFile, NextCAKeyFile, NextCACertFile, PreviousCACertFile, CACertFile}
			}
			if got := dirNames(t, d); !slices.Equal(got, files) {
				t.Errorf("files %v, want %v", got, files)
			}
			names{}.view(t, d, st) // ca.pem and ca-key.pem match
		})
	}
}
