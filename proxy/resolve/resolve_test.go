package resolve

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// fakeDiscovery answers every subscription with the state its answer
// function gives, and can push new states. It stands in for `pillion
// discovery` in these unit tests of the client alone; e2e/discovery_test.go
// runs the real one.
type fakeDiscovery struct {
	discoveryv1.UnimplementedDiscoveryServer
	mu      sync.Mutex
	answer  func(dst string) *discoveryv1.Destination
	streams map[discoveryv1.Discovery_WatchServer][]string
	subs    chan string // every subscription received
}

func (f *fakeDiscovery) Watch(s discoveryv1.Discovery_WatchServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		for _, dst := range req.Subscribe {
			f.subs <- dst
			f.mu.Lock()
			f.streams[s] = append(f.streams[s], dst)
			st := f.answer(dst)
			f.mu.Unlock()
			if err := s.Send(&discoveryv1.WatchResponse{Destination: dst, State: st}); err != nil {
				return err
			}
		}
	}
}

// push sends every stream subscribed to dst the state answer now gives.
func (f *fakeDiscovery) push(dst string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s, subs := range f.streams {
		for _, d := range subs {
			if d == dst {
				_ = s.Send(&discoveryv1.WatchResponse{Destination: dst, State: f.answer(dst)})
			}
		}
	}
}

func endpoints(addrs ...string) *discoveryv1.Destination {
	d := &discoveryv1.Destination{Kind: discoveryv1.Destination_SERVICE, Service: &discoveryv1.ServiceRef{Namespace: "shop", Name: "web"}}
	for _, a := range addrs {
		d.Endpoints = append(d.Endpoints, &discoveryv1.Endpoint{Address: a, Ready: true})
	}
	return d
}

// server runs f on lis until the returned stop is called.
func server(t *testing.T, lis *bufconn.Listener, f *fakeDiscovery) (stop func()) {
	srv := grpc.NewServer()
	discoveryv1.RegisterDiscoveryServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	var once sync.Once
	stop = func() { once.Do(srv.Stop) }
	t.Cleanup(stop)
	return stop
}

// ownID is the sidecar's identity as the resolver sees it: only its trust
// domain matters here.
type ownID struct{}

func (ownID) GetX509SVID() (*x509svid.SVID, error) {
	return &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")}, nil
}

func newResolver(t *testing.T, dial func(context.Context, string) (net.Conn, error)) *Resolver {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///discovery", grpc.WithContextDialer(dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r, err := New(Config{Conn: conn, Identity: ownID{}, Log: zap.NewNop(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func addrs(st *State) []string {
	if st == nil {
		return nil
	}
	var out []string
	for _, ep := range st.Endpoints {
		out = append(out, ep.Addr.String())
	}
	return out
}

var web = netip.MustParseAddrPort("198.19.0.10:80")

func TestFirstLookupWaitsForTheAnswerThenFollowsChanges(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	eps := []string{"198.18.0.2:8080", "198.18.0.3:8080"}
	var mu sync.Mutex
	f := &fakeDiscovery{streams: map[discoveryv1.Discovery_WatchServer][]string{}, subs: make(chan string, 100),
		answer: func(string) *discoveryv1.Destination { mu.Lock(); defer mu.Unlock(); return endpoints(eps...) }}
	server(t, lis, f)
	r := newResolver(t, func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	waitFor(t, "the stream to open", func() bool {
		r.Resolve(context.Background(), netip.MustParseAddrPort("198.19.0.99:1")) // opens it
		return r.Connected()
	})

	st := r.Resolve(context.Background(), web)
	if st == nil || st.Kind != Service || st.Service.Name != "web" || len(st.Endpoints) != 2 {
		t.Fatalf("first lookup = %+v, want the Service's two endpoints (it must wait for the answer)", st)
	}
	mu.Lock()
	eps = []string{"198.18.0.4:8080"}
	mu.Unlock()
	f.push(web.String())
	waitFor(t, "the change", func() bool {
		got := addrs(r.Resolve(context.Background(), web))
		return len(got) == 1 && got[0] == "198.18.0.4:8080"
	})
	if n := r.Stats().Updates.Load(); n < 3 {
		t.Errorf("updates = %d, want at least 3", n)
	}
}

func TestDiscoveryAwayServesWhatItHoldsAndResubscribes(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	var mu sync.Mutex
	up, eps := true, []string{"198.18.0.2:8080"}
	f := &fakeDiscovery{streams: map[discoveryv1.Discovery_WatchServer][]string{}, subs: make(chan string, 100),
		answer: func(string) *discoveryv1.Destination { mu.Lock(); defer mu.Unlock(); return endpoints(eps...) }}
	stop := server(t, lis, f)
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		mu.Lock()
		ok, l := up, lis
		mu.Unlock()
		if !ok {
			return nil, net.ErrClosed
		}
		return l.DialContext(ctx)
	}
	r := newResolver(t, dial)
	waitFor(t, "the first answer", func() bool { return len(addrs(r.Resolve(context.Background(), web))) == 1 })

	// Discovery goes away: what is held keeps serving, and a destination
	// never asked before is not waited for.
	mu.Lock()
	up = false
	mu.Unlock()
	stop()
	waitFor(t, "the stream to be seen down", func() bool { return !r.Connected() })
	if got := addrs(r.Resolve(context.Background(), web)); len(got) != 1 || got[0] != "198.18.0.2:8080" {
		t.Fatalf("while discovery is away: %v, want the endpoint held", got)
	}
	other := netip.MustParseAddrPort("198.19.0.11:80")
	start := time.Now()
	if st := r.Resolve(context.Background(), other); st != nil {
		t.Fatalf("a destination never answered = %+v, want nil (forward as is)", st)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a lookup while discovery is away took %v: it must not wait", d)
	}

	// Discovery comes back, with a change made while it was away: both
	// destinations are asked for again and the change is taken.
	mu.Lock()
	up, eps = true, []string{"198.18.0.5:8080"}
	mu.Unlock()
	mu.Lock()
	lis = bufconn.Listen(1 << 20) // dial reads lis when it is called
	mu.Unlock()
	server(t, lis, f)
	waitFor(t, "the change made while discovery was away", func() bool {
		got := addrs(r.Resolve(context.Background(), web))
		return len(got) == 1 && got[0] == "198.18.0.5:8080"
	})
	waitFor(t, "the destination first asked while away", func() bool {
		return len(addrs(r.Resolve(context.Background(), other))) == 1
	})
	if r.Stats().Disconnects.Load() < 1 || r.Stats().Connects.Load() < 2 {
		t.Errorf("connects %d, disconnects %d: want the reconnect counted", r.Stats().Connects.Load(), r.Stats().Disconnects.Load())
	}
	// The same, as metrics.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.Collectors()...)
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	if got["pillion_discovery_client_connects_total"] < 2 || got["pillion_discovery_client_disconnects_total"] < 1 ||
		got["pillion_discovery_client_connected"] != 1 || got["pillion_discovery_client_destinations"] != 2 ||
		got["pillion_discovery_client_updates_total"] < 3 {
		t.Errorf("metrics %v: want 2 connects or more, 1 disconnect or more, connected, 2 destinations, 3 updates or more", got)
	}
}

// TestDiscoveryNeverReached: with discovery unreachable from the start, a
// first lookup waits at most FirstAnswer (the stream may be connecting),
// and once that has passed none waits: destinations go as they are.
func TestDiscoveryNeverReached(t *testing.T) {
	r := newResolver(t, func(context.Context, string) (net.Conn, error) { return nil, net.ErrClosed })
	start := time.Now()
	if st := r.Resolve(context.Background(), web); st != nil {
		t.Fatalf("Resolve = %+v, want nil", st)
	}
	if d := time.Since(start); d < DefaultFirstAnswer/2 || d > DefaultFirstAnswer+500*time.Millisecond {
		t.Errorf("the first lookup took %v, want about %v (waiting for the stream to open)", d, DefaultFirstAnswer)
	}
	start = time.Now()
	if st := r.Resolve(context.Background(), netip.MustParseAddrPort("198.19.0.11:80")); st != nil {
		t.Fatalf("Resolve = %+v, want nil", st)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a lookup after discovery proved unreachable took %v: it must not wait", d)
	}
}
