package proxy

import (
	"cmp"
	"slices"

	"github.com/pillionmesh/pillion/proxy/pool"
)

// PoolConns returns the upstream pools' open connections per endpoint and
// protocol, both directions: an endpoint that is both an outbound
// destination and the application (the app calling its own pod IP) is
// counted once, with both directions' connections.
func (s *Server) PoolConns() []pool.EndpointConns {
	all := append(s.pools[Outbound].Conns(), s.pools[Inbound].Conns()...)
	same := func(a, b pool.EndpointConns) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Protocol, b.Protocol))
	}
	slices.SortStableFunc(all, same)
	out := all[:0]
	for _, e := range all {
		if n := len(out); n > 0 && same(out[n-1], e) == 0 {
			m := &out[n-1]
			m.Open, m.Total, m.ConnectFailures = m.Open+e.Open, m.Total+e.Total, m.ConnectFailures+e.ConnectFailures
			m.ActiveRequests, m.TotalRequests = m.ActiveRequests+e.ActiveRequests, m.TotalRequests+e.TotalRequests
			continue
		}
		out = append(out, e)
	}
	return out
}

// closeIdlePools closes the idle connections of both directions' pools.
func (s *Server) closeIdlePools() {
	for _, p := range s.pools {
		p.CloseIdle()
	}
}
