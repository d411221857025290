package issuer

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
)

// watcher hands go-spiffe's updates to the test.
type watcher struct {
	svids   chan *workloadapi.X509Context
	bundles chan *x509bundle.Set
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.svids <- c }
func (w watcher) OnX509BundlesUpdate(s *x509bundle.Set)          { w.bundles <- s }
func (watcher) OnX509ContextWatchError(error)                    {}
func (watcher) OnX509BundlesWatchError(error)                    {}

func recv[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		panic("unreachable")
	}
}

// TestWorkloadAPIFollowsRotation: with a fake clock, each rotation step
// reaches open FetchX509SVID and FetchX509Bundles streams at once: the
// bundle grows to the next CA, then the SVID is the new CA's, then the
// previous CA leaves; each SVID verifies against the bundle it came with.
func TestWorkloadAPIFollowsRotation(t *testing.T) {
	clk := &fakeClock{t: t0}
	a, _, err := openAuthority(t.TempDir(), testTD, caLife, zap.NewNop(), clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sockDir(t), "api.sock")
	id := spiffeid.RequireFromPath(testTD, "/a")
	// The SVID of 2h issued a minute before B is prepared is not due for
	// renewal then: that response carries the same SVID, the new bundle.
	clk.set(t0.Add(caLife/2 - time.Minute))
	serveKeys(t, a, a.Current().Active, Config{Sockets: []Socket{{Path: path, ID: id}}, SVIDTTL: caLife / 4})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := workloadapi.New(ctx, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := watcher{svids: make(chan *workloadapi.X509Context, 8), bundles: make(chan *x509bundle.Set, 8)}
	go func() { _ = client.WatchX509Context(ctx, w) }()
	go func() { _ = client.WatchX509Bundles(ctx, w) }()

	n := names{}
	// update checks the latest X509Context: its SVID verifies against its
	// bundle, and returns the SVID's CA and the bundle, in letters. A step
	// may send the same state twice (the stream's resend is no news): the
	// state after the step is the last update before the stream goes
	// quiet, not the first (which, once in twenty runs, was the previous
	// step's repeated).
	update := func() (string, []string, *x509svid.SVID) {
		t.Helper()
		c := recv(t, w.svids, "X.509-SVID update")
		for quiet := false; !quiet; {
			select {
			case c = <-w.svids:
			case <-time.After(200 * time.Millisecond):
				quiet = true
			}
		}
		svid := c.DefaultSVID()
		_, chains, err := x509svid.Verify(svid.Certificates, c.Bundles, x509svid.WithTime(clk.now()))
		if err != nil {
			t.Fatalf("the SVID does not verify against the bundle it came with: %v", err)
		}
		return n.of(chains[0][1]), bundleNames(t, n, c.Bundles), svid
	}
	bundles := func() []string {
		t.Helper()
		return bundleNames(t, n, recv(t, w.bundles, "bundle update"))
	}

	signer, bundle, first := update()
	if signer != "A" || !slices.Equal(bundle, []string{"A"}) || !slices.Equal(bundles(), []string{"A"}) {
		t.Fatalf("first: SVID of %s, bundle %v; want A and [A]", signer, bundle)
	}
	for _, tt := range []struct {
		at       time.Duration
		signer   string
		bundle   []string
		sameSVID bool
	}{
		{caLife / 2, "A", []string{"A", "B"}, true},      // B prepared
		{3 * caLife / 4, "B", []string{"A", "B"}, false}, // B activated
		{caLife, "B", []string{"B", "C"}, false},         // A retired, C prepared
	} {
		clk.set(t0.Add(tt.at))
		if err := a.Tick(); err != nil {
			t.Fatal(err)
		}
		signer, bundle, svid := update()
		if signer != tt.signer || !slices.Equal(bundle, tt.bundle) {
			t.Errorf("at %v: SVID of %s, bundle %v; want %s, %v", tt.at, signer, bundle, tt.signer, tt.bundle)
		}
		if same := svid.Certificates[0].Equal(first.Certificates[0]); same != tt.sameSVID {
			t.Errorf("at %v: same SVID as before %v, want %v", tt.at, same, tt.sameSVID)
		}
		first = svid
		// The bundles stream hears of changes of the bundle only: the
		// activation is no news there.
		if tt.at == 3*caLife/4 {
			continue
		}
		if got := bundles(); !slices.Equal(got, tt.bundle) {
			t.Errorf("at %v: FetchX509Bundles sent %v, want %v", tt.at, got, tt.bundle)
		}
	}
	select {
	case s := <-w.bundles:
		t.Errorf("an extra bundle update: %v", bundleNames(t, n, s))
	default:
	}
}

func bundleNames(t *testing.T, n names, s *x509bundle.Set) []string {
	t.Helper()
	b, ok := s.Get(testTD)
	if !ok || s.Len() != 1 {
		t.Fatalf("%d bundles, ours present %v; want ours alone", s.Len(), ok)
	}
	var out []string
	for _, c := range b.X509Authorities() {
		out = append(out, n.of(c))
	}
	return out
}
