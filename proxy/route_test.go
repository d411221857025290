package proxy

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/resolve"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// fakeDiscovery answers from a map the test changes.
type fakeDiscovery struct {
	mu     sync.Mutex
	states map[netip.AddrPort]*resolve.State
}

func (f *fakeDiscovery) Resolve(_ context.Context, dst netip.AddrPort) *resolve.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.states[dst]
}

func (f *fakeDiscovery) set(dst netip.AddrPort, st *resolve.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[dst] = st
}

func service(addrs ...string) *resolve.State {
	svc := upstream.Service{Namespace: "shop", Name: "web"}
	st := &resolve.State{Kind: resolve.Service, Service: svc}
	for _, a := range addrs {
		st.Endpoints = append(st.Endpoints, balance.Endpoint{
			Endpoint: upstream.Endpoint{Addr: netip.MustParseAddrPort(a), Service: svc}, Ready: true, Serving: true,
		})
	}
	return st
}

// TestRoutes: a destination discovery knows is balanced over its
// endpoints; one it does not know goes as it is; an invalid answer fails
// with no healthy upstream; /clusters' Routes follow discovery's latest
// answer without waiting for a request, and hold only destinations used.
func TestRoutes(t *testing.T) {
	web := netip.MustParseAddrPort("10.96.0.10:80")
	bad := netip.MustParseAddrPort("10.96.0.11:80")
	elsewhere := netip.MustParseAddrPort("192.0.2.1:443")
	disc := &fakeDiscovery{states: map[netip.AddrPort]*resolve.State{
		web:       service("10.1.0.1:8080", "10.1.0.2:8080"),
		bad:       {Kind: resolve.Service, Err: errors.New("an endpoint without an identity")},
		elsewhere: {Kind: resolve.Unknown},
	}}
	cfg := DefaultConfig()
	ca := svidtest.CA(t, "", "cluster.local")
	cfg.Identity = readyIdentity{svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/a/sa/a")}
	cfg.Discovery = disc
	s, err := New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	if r := s.routes.discovered(ctx, elsewhere); r != nil {
		t.Errorf("a destination discovery does not know: route %v, want none (as it is)", r)
	}
	if _, _, err := s.routes.discovered(ctx, bad).Pick(); !errors.Is(err, upstream.ErrNoHealthyUpstream) {
		t.Errorf("an invalid answer: Pick error %v, want no healthy upstream", err)
	}
	picked := map[netip.AddrPort]bool{}
	r := s.routes.discovered(ctx, web)
	for range 100 {
		ep, done, err := r.Pick()
		if err != nil {
			t.Fatal(err)
		}
		picked[ep.Addr] = true
		done(0, false)
	}
	if len(picked) != 2 {
		t.Errorf("100 picks went to %v, want both endpoints", picked)
	}

	// A Service port discovery hints as opaque TCP is not sniffed (a
	// server that speaks first would wait for the sniff to time out); one
	// it does not hint is.
	if s.routes.opaque(ctx, web) {
		t.Error("a destination without discovery's opaque hint counts as opaque")
	}
	db := netip.MustParseAddrPort("10.96.0.12:3306")
	dbState := service("10.1.0.9:3306")
	dbState.Protocol = resolve.Opaque
	disc.set(db, dbState)
	if det, err := s.detector.detect(nil, Outbound, db); err != nil || !det.skipped {
		t.Errorf("discovery's opaque hint: detection %+v, %v; want skipped", det, err)
	}

	disc.set(web, service("10.1.0.3:8080"))
	routes := s.Routes()
	if len(routes) != 1 || routes[0].Destination != web {
		t.Fatalf("Routes = %+v, want web's only (the destination used)", routes)
	}
	if eps := routes[0].Endpoints; len(eps) != 1 || eps[0].Addr.String() != "10.1.0.3:8080" || routes[0].Service.Name != "web" {
		t.Errorf("after discovery's new answer, before any request, Routes shows %+v, want web's one new endpoint", eps)
	}
}
