package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"github.com/pillionmesh/pillion/proxy/pool"
	"github.com/pillionmesh/pillion/proxy/upstream"
	"github.com/pillionmesh/pillion/redirect"
)

// Inbound delivery. The inbound side connects to the application at the
// connection's original destination — the pod's own IP and the port the
// peer asked — from 127.0.0.6 (::6), as Istio does since 1.10: a listener
// bound to localhost only (a debug or pprof port) is then refused to the
// mesh instead of answering every pod, and an application bound to its pod
// IP only is reached. `pillion init` lets connections from that source to
// the pod's own addresses through uncaptured (without it they would come
// back to the inbound listener) and puts ::6 on lo.

// dialApp connects to the application at dst, from
// redirect.InboundSourceFor(dst) — the choice the application-probe runner
// makes too: the kernel's when dst is loopback, never the case for a
// captured connection, whose destination is the pod's address, but so in
// tests and where a loopback address is the original destination, which
// capture does not touch. The application's refusal (nothing listens at
// dst: e.g. it listens on localhost only) is returned as is, wrapped:
// errors.Is(err, syscall.ECONNREFUSED).
func (s *Server) dialApp(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	src := redirect.InboundSourceFor(dst.Addr())
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return nil, fmt.Errorf("proxy: connecting to the application at %s from %s, which is not an address "+
			"of this pod (pillion init adds ::6 to lo where IPv6 is enabled): %w", dst, src, err)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: connecting to the application at %s: %w", dst, err)
	}
	return c, nil
}

// appPoolDial is the dialer of the inbound pools: the application, over
// plain TCP, whatever the pool's protocol.
func (s *Server) appPoolDial(ctx context.Context, ep upstream.Endpoint, _ upstream.Protocol) (net.Conn, error) {
	return s.dialApp(ctx, ep.Addr)
}

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
