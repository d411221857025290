package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/sniff"
)

// detector looks at an accepted connection before it is forwarded: whether
// its original destination is one of the proxy's own listeners (a loop),
// and what protocol it carries. It keeps no state of its own beyond its
// settings and is safe for concurrent use.
type detector struct {
	// cfg is the Server's: the capture ports, OpaquePorts and
	// SniffTimeout. Read only.
	cfg *Config
	// localAddrs is the kernel's list of this namespace's addresses,
	// replaceable in tests.
	localAddrs func() ([]net.Addr, error)
	// mtls is whether the proxy has an identity: inbound opaque ports are
	// then read too.
	mtls bool
	// routes gives discovery's opaque hint of an outbound destination,
	// asked within ctx (the server's hard stop).
	routes *routes
	ctx    context.Context
	log    *zap.Logger
}

// isOwnListener reports whether dst is one of the proxy's listeners: a
// capture port on an address of this network namespace.
func (d *detector) isOwnListener(dst netip.AddrPort) bool {
	if dst.Port() != d.cfg.OutboundPort && dst.Port() != d.cfg.InboundPort {
		return false
	}
	a := dst.Addr()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := d.localAddrs()
	if err != nil {
		// Cannot tell: refusing is the safe side of a possible loop.
		d.log.Error("listing local addresses", zap.Error(fmt.Errorf("proxy: %w", err)))
		return true
	}
	for _, la := range addrs {
		if p, err := netip.ParsePrefix(la.String()); err == nil && p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}

// detection is what detect found, with how it came to it.
type detection struct {
	sniff.Result
	skipped    bool // the port is declared opaque: not read
	opaquePort bool // the port is declared opaque: read, never HTTP
}

// isHTTP reports whether the connection is served as HTTP.
func (d detection) isHTTP() bool {
	return !d.opaquePort && (d.Protocol == sniff.HTTP1 || d.Protocol == sniff.HTTP2)
}

// how names the way the protocol was decided, for the log.
func (d detection) how() string {
	switch {
	case d.skipped:
		return "opaque port"
	case d.TimedOut:
		return "time-out"
	case d.EOF:
		return "client closed"
	}
	return "first bytes"
}

// detect tells the connection's protocol from its first bytes, unless its
// original destination port is declared opaque, or (outbound) discovery
// says the destination's port is (a Service port's appProtocol: a server
// that speaks first is then not kept waiting for the sniff to time out).
// Inbound with mTLS on, opaque ports are read too, to tell peer sidecars
// (who speak first) from the rest, but never served as HTTP.
func (d *detector) detect(c *net.TCPConn, dir Direction, dst netip.AddrPort) (detection, error) {
	opaque := d.cfg.OpaquePorts.Contains(dst.Port()) || (dir == Outbound && d.routes.opaque(d.ctx, dst))
	if opaque && (dir == Outbound || !d.mtls) {
		return detection{skipped: true}, nil
	}
	r, err := sniff.Read(c, d.cfg.SniffTimeout)
	return detection{Result: r, opaquePort: opaque}, err
}
