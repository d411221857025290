package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/resolve"
	"github.com/pillionmesh/pillion/proxy/upstream"
	"github.com/pillionmesh/pillion/sidecar"
)

// Discovery is what the proxy needs of `pillion discovery`'s client
// (resolve.Resolver): what stands behind a destination, asked on demand.
type Discovery interface {
	// Resolve returns what discovery said of dst, nil when nothing (yet):
	// dst is then forwarded to as it is.
	Resolve(ctx context.Context, dst netip.AddrPort) *resolve.State
}

// routes picks the endpoint of each connection and request: the
// application inbound, and outbound the destination itself or one of the
// endpoints discovery announced behind it. It holds one balancer per
// destination discovery answered for, each kept in step with discovery's
// latest answer; only the destinations this sidecar's application used are
// here. It is safe for concurrent use.
type routes struct {
	cfg balance.Config
	now func() time.Time
	// discovery is Config.Discovery, nil without; it is asked only when
	// mtls (the proxy has an identity), as are mesh networks.
	discovery Discovery
	mtls      bool
	by        sync.Map // netip.AddrPort → *balanced
}

// balanced is the route of one discovered destination.
type balanced struct {
	*balance.Balancer
	mu    sync.Mutex                    // held while the endpoints are replaced
	state atomic.Pointer[resolve.State] // the answer the balancer's endpoints come from
}

// route returns the route of a connection or request to dst in direction
// d, under mesh config m: inbound, the application at dst itself (the
// pod's own IP and the port the peer asked; dialApp connects from
// 127.0.0.6 or ::6); outbound, the balancer of the Service (or pod)
// discovery announced at dst, else dst itself, meshed when m says so.
func (rs *routes) route(ctx context.Context, d Direction, m configfile.Mesh, dst netip.AddrPort) upstream.Route {
	if d == Inbound {
		return upstream.Fixed{Addr: dst}
	}
	if r := rs.discovered(ctx, dst); r != nil {
		return r
	}
	return upstream.Fixed{Addr: dst, Meshed: rs.meshedIn(m, dst)}
}

// meshedIn reports whether dst is served by a peer sidecar under m. Never
// without mTLS, never on loopback (this pod's application), and never the
// peer sidecar's health or Prometheus port.
func (rs *routes) meshedIn(m configfile.Mesh, dst netip.AddrPort) bool {
	if dst.Port() == sidecar.HealthPort || dst.Port() == sidecar.PrometheusPort {
		return false
	}
	return rs.mtls && !dst.Addr().IsLoopback() && m.Contains(dst.Addr())
}

// discovered returns the route of dst from discovery's answer, nil when
// discovery is not configured or knows nothing of dst.
func (rs *routes) discovered(ctx context.Context, dst netip.AddrPort) upstream.Route {
	if rs.discovery == nil || !rs.mtls {
		return nil
	}
	st := rs.discovery.Resolve(ctx, dst)
	if st == nil || (st.Kind == resolve.Unknown && st.Err == nil) {
		return nil
	}
	if st.Err != nil {
		return failed{st.Err}
	}
	v, ok := rs.by.Load(dst)
	if !ok {
		v, _ = rs.by.LoadOrStore(dst, &balanced{Balancer: balance.New(rs.cfg, rs.now, nil)})
	}
	b := v.(*balanced)
	b.follow(st)
	return b
}

// follow brings the balancer's endpoints to discovery's answer st.
func (b *balanced) follow(st *resolve.State) {
	if b.state.Load() == st { // answers are immutable: a new one is a new pointer
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state.Load() != st {
		b.Update(st.Endpoints)
		b.state.Store(st)
	}
}

// opaque says whether discovery's answer for dst hints opaque TCP. The
// answer is the one the route then uses (asked once, held after).
func (rs *routes) opaque(ctx context.Context, dst netip.AddrPort) bool {
	if rs.discovery == nil || !rs.mtls {
		return false
	}
	st := rs.discovery.Resolve(ctx, dst)
	return st != nil && st.Err == nil && st.Protocol == resolve.Opaque
}

// failed is the route of a destination whose discovery answer was not
// valid: no request is sent anywhere, least of all in plaintext.
type failed struct{ err error }

func (f failed) Pick() (upstream.Endpoint, upstream.Done, error) {
	return upstream.Endpoint{}, nil, fmt.Errorf("%w: %w", upstream.ErrNoHealthyUpstream, f.err)
}

// ServiceRoute is one destination discovery answered for, as /clusters
// shows it.
type ServiceRoute struct {
	Destination netip.AddrPort
	Kind        string
	Service     upstream.Service
	Error       string // discovery's answer was not valid
	Endpoints   []balance.EndpointStats
}

// Routes returns the destinations discovery answered for, with their
// balancers' endpoints as of discovery's latest answer (not only as of the
// last request), sorted by destination.
func (s *Server) Routes() []ServiceRoute { return s.routes.snapshot() }

// snapshot is Server.Routes.
func (rs *routes) snapshot() []ServiceRoute {
	var out []ServiceRoute
	rs.by.Range(func(k, v any) bool {
		b := v.(*balanced)
		// A destination here was answered: Resolve does not wait.
		if st := rs.discovery.Resolve(context.Background(), k.(netip.AddrPort)); st != nil {
			b.follow(st)
		}
		st := b.state.Load()
		r := ServiceRoute{Destination: k.(netip.AddrPort), Endpoints: b.Snapshot()}
		if st != nil {
			r.Kind, r.Service = st.Kind.String(), st.Service
			if st.Err != nil {
				r.Error = st.Err.Error()
			}
		}
		out = append(out, r)
		return true
	})
	sortRoutes(out)
	return out
}

func sortRoutes(rs []ServiceRoute) {
	slices.SortFunc(rs, func(a, b ServiceRoute) int { return a.Destination.Compare(b.Destination) })
}
