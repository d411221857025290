package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/relay"
	"github.com/pillionmesh/pillion/proxy/upstream"
	"github.com/pillionmesh/pillion/redirect"
)

// dialer connects upstream, to an endpoint as its route picked it: a peer
// sidecar in mTLS, after a slot among the handshakes in flight; any other
// destination in plain TCP; and, inbound, the application from 127.0.0.6
// (::6). It decides nothing of its own: whether an endpoint is meshed
// comes with it. It is safe for concurrent use.
type dialer struct {
	timeout    time.Duration // Config.DialTimeout: the TCP connect
	mesh       *meshTLS      // nil without an identity: nothing is meshed
	handshakes *handshakes   // shared with the inbound side's handshakes
	stats      *DirStats     // outbound's: mTLS handshakes made and failed
	log        *zap.Logger
}

// poolDial is the pools' dialer: dial ep, announcing the pool's protocol
// to a peer sidecar.
func (d *dialer) poolDial(ctx context.Context, ep upstream.Endpoint, proto upstream.Protocol) (net.Conn, error) {
	alpn := mtls.ProtoHTTP2
	if proto == upstream.HTTP1 {
		alpn = mtls.ProtoHTTP1
	}
	return d.dial(ctx, ep, alpn)
}

// dial connects to ep as it was picked: in mTLS carrying alpn when it is
// meshed (a *tls.Conn), else in plain TCP (a *net.TCPConn). Nothing is
// decided again here: a meshed endpoint is never dialled in plaintext.
func (d *dialer) dial(ctx context.Context, ep upstream.Endpoint, alpn string) (net.Conn, error) {
	if ep.Meshed {
		tc, err := d.dialMesh(ctx, ep, alpn)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return tc, nil
	}
	nd := net.Dialer{Timeout: d.timeout}
	return nd.DialContext(ctx, "tcp", ep.Addr.String())
}

// dialMesh connects to the peer sidecar at ep (its pod's address: the
// peer's inbound capture takes it) in mTLS carrying alpn. The peer must
// present ep.Identity when it is set (the identity discovery announced),
// else any SVID of our trust domain. Without an SVID of our own it fails:
// traffic to the mesh is never sent in the clear.
func (d *dialer) dialMesh(ctx context.Context, ep upstream.Endpoint, alpn string) (*tls.Conn, error) {
	st := d.stats
	dst := ep.Addr
	if err := d.mesh.id.Ready(); err != nil {
		st.TLSFailures[mtls.FailureNoSVID].Add(1)
		return nil, fmt.Errorf("mTLS to %s: %w: %w", dst, mtls.ErrNoSVID, err)
	}
	cfg, err := d.mesh.clientFor(ep.Identity, alpn)
	if err != nil {
		st.TLSFailures[mtls.FailureWrongIdentity].Add(1)
		return nil, fmt.Errorf("mTLS to %s: %w", dst, err)
	}
	// The slot comes before the connect: a peer reads a connection that
	// stays silent while it waits for one as not a sidecar's. (A connect
	// that hangs thereby holds a slot, up to DialTimeout.) The wait has a
	// bound of its own: a burst of new connections queues for as long as
	// the handshakes before it take; DialTimeout then bounds the connect,
	// and handshakeTimeout the handshake.
	qctx, cancelQ := context.WithTimeout(ctx, handshakeQueueTimeout)
	release, err := d.handshakes.acquire(qctx, d.log)
	cancelQ()
	if err != nil {
		return nil, err
	}
	defer release()
	dctx, cancelD := context.WithTimeout(ctx, d.timeout)
	var nd net.Dialer
	c, err := nd.DialContext(dctx, "tcp", dst.String())
	cancelD()
	if err != nil {
		return nil, err
	}
	// The handshake has the peer's bound (it may wait in the peer's own
	// queue of handshakes), as Envoy's transport socket time-out is
	// apart from its connect time-out.
	hctx, cancelH := context.WithTimeout(ctx, handshakeTimeout)
	defer cancelH()
	tc := tls.Client(c, cfg)
	if err := handshake(hctx, tc); err != nil {
		f := mtls.Classify(err)
		st.TLSFailures[f].Add(1)
		relay.Reset(c)
		if f == mtls.FailureWrongIdentity {
			d.log.Warn("refusing an endpoint that presented another identity than discovery announced: nothing sent",
				zap.Stringer("upstream", dst), zap.String("expected", ep.Identity), zap.Error(err))
		}
		return nil, fmt.Errorf("mTLS handshake with %s (%s): %w", dst, f, err)
	}
	st.MTLS.Add(1)
	return tc, nil
}

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
func (d *dialer) dialApp(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.timeout}
	src := redirect.InboundSourceFor(dst.Addr())
	if src.IsValid() {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	c, err := nd.DialContext(ctx, "tcp", dst.String())
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
func (d *dialer) appPoolDial(ctx context.Context, ep upstream.Endpoint, _ upstream.Protocol) (net.Conn, error) {
	return d.dialApp(ctx, ep.Addr)
}
