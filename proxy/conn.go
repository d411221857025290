package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/relay"
	"github.com/pillionmesh/pillion/proxy/sniff"
)

// errLoop marks a connection whose original destination is one of the
// proxy's own listeners: forwarding it would send it back to us.
var errLoop = errors.New("original destination is the proxy's own listener")

// conn is one proxied connection: what the proxy learnt of it before
// forwarding.
type conn struct {
	c           *net.TCPConn // as accepted
	dir         Direction
	dst, target netip.AddrPort
	det         detection
	start       time.Time
	// alpn and peer are set on connections to or from a peer sidecar: what
	// the mTLS connection carries and the peer's SPIFFE ID.
	alpn, peer string
}

// handle proxies one accepted connection. It owns c, which the caller has
// tracked.
func (s *Server) handle(c *net.TCPConn, dir Direction) {
	st := &s.stats.Dir[dir]
	cn := &conn{c: c, dir: dir, start: time.Now()}

	dst, err := s.origDst(c)
	if err != nil {
		st.NoOrigDst.Add(1)
		s.log.Error("refusing connection", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Error(err))
		relay.Reset(c)
		return
	}
	cn.dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.detector.isOwnListener(cn.dst) {
		st.Loops.Add(1)
		s.log.Warn("refusing connection", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Stringer("dst", cn.dst), zap.Error(errLoop))
		relay.Reset(c)
		return
	}
	cn.target = cn.dst // outbound where the app meant to go; inbound the app there

	cn.det, err = s.detector.detect(c, dir, cn.dst)
	if err != nil {
		// The client reset the connection before it said enough.
		if ce := s.log.Check(zap.DebugLevel, "connection ended during protocol detection"); ce != nil {
			ce.Write(zap.Stringer("direction", dir), zap.Stringer("src", c.RemoteAddr()),
				zap.Stringer("dst", cn.dst), zap.Error(err))
		}
		relay.Reset(c)
		return
	}
	st.Detected[cn.det.Protocol].Add(1)
	if cn.det.TimedOut {
		st.SniffTimeouts.Add(1)
	}
	if dir == Inbound && s.mesh != nil && !s.admit(cn) {
		return
	}
	if cn.det.isHTTP() {
		s.handleHTTP(cn, &prefixConn{TCPConn: c, prefix: cn.det.Peeked})
		return
	}
	s.relayOpaque(cn, c)
}

// relayOpaque forwards cn, read through down (c itself, or mTLS over it),
// byte for byte, to an endpoint picked from its destination's route (one
// of a Service's endpoints, balanced per connection): over mTLS when the
// endpoint is a peer sidecar.
func (s *Server) relayOpaque(cn *conn, down relay.Conn) {
	st := &s.stats.Dir[cn.dir]
	// Inbound, the route is the application at the original destination,
	// never meshed.
	ep, done, err := s.routes.route(s.life.hardStop, cn.dir, s.config.Load().file.Mesh, cn.dst).Pick()
	if err != nil {
		s.failedIstioTCP(cn, ep, filters.NoHealthyUpstream)
		st.DialFailures.Add(1)
		s.log.Warn("no upstream", cn.fields(0, zap.Error(err))...)
		relay.Reset(down)
		return
	}
	cn.target = ep.Addr
	start := time.Now()
	var uc net.Conn
	if cn.dir == Inbound {
		uc, err = s.dialer.dialApp(s.life.hardStop, ep.Addr)
	} else {
		uc, err = s.dialer.dial(s.life.hardStop, ep, mtls.ProtoTCP)
	}
	connected := time.Since(start)
	if err != nil {
		done(connected, true)
		s.failedIstioTCP(cn, ep, filters.UpstreamConnectFailure)
		st.DialFailures.Add(1)
		s.log.Warn("upstream connect failed", cn.fields(0, zap.Error(err))...)
		relay.Reset(down)
		return
	}
	// The connection counts as pending on its endpoint until it ends:
	// opaque TCP is balanced by connections open and connect time.
	defer func() { done(connected, false) }()
	var up relay.Conn
	var upTCP *net.TCPConn
	switch c := uc.(type) {
	case *tls.Conn:
		up, upTCP = c, c.NetConn().(*net.TCPConn)
		cn.alpn = mtls.ProtoTCP
		if id, err := mtls.PeerID(c.ConnectionState()); err == nil {
			cn.peer = id.String() // the peer sidecar's
		}
	case *net.TCPConn:
		up, upTCP = c, c
	}
	if !s.admission.track(upTCP) {
		relay.Reset(up)
		relay.Reset(down)
		return
	}
	defer s.admission.untrack(upTCP)
	// What detection read goes first; the relay then splices the rest.
	// The connection may stay open for days: its buffer goes now.
	peeked := int64(len(cn.det.Peeked))
	if _, err := up.Write(cn.det.Peeked); err != nil {
		st.DialFailures.Add(1)
		s.log.Warn("upstream write failed", cn.fields(0, zap.Error(err))...)
		relay.Reset(up)
		relay.Reset(down)
		return
	}
	cn.det.Peeked = nil

	st.Active.Add(1)
	var progress *relay.Progress
	if tcp := s.openIstioTCP(cn, ep); tcp != nil {
		// Istio's TCP byte counters move while a connection lasts (a
		// pooled database connection may last for days), not only at its
		// close.
		tcp.Received(peeked)
		progress = &relay.Progress{Every: istioTCPReportEvery, Up: tcp.Received, Down: tcp.Sent}
		defer tcp.End()
	}
	res := relay.TCP(down, up, s.cfg.IdleTimeout, &s.bufs, progress)
	st.Active.Add(-1)
	st.Completed.Add(1)
	sent := res.Sent + peeked
	st.BytesSent.Add(sent)
	st.BytesRecv.Add(res.Received)
	s.logConnection(cn, sent, res.Received, res.Err)
}

// handleHTTP hands cn, read through down (c after what detection peeked,
// or mTLS over it), to the direction's HTTP server and returns when the
// connection is closed.
func (s *Server) handleHTTP(cn *conn, down net.Conn) {
	st := &s.stats.Dir[cn.dir]
	meta := connMeta{src: addrPort(cn.c.RemoteAddr()), dst: cn.dst, peer: cn.peer}
	if cn.alpn == mtls.ProtoHTTP1 || (cn.alpn == "" && cn.det.Protocol == sniff.HTTP1) {
		meta.framing = &framing{}
	}
	hc := newHTTPConn(down, meta, s.cfg.HeaderTimeout)
	st.Active.Add(1)
	if cn.alpn == mtls.ProtoHTTP2 || (cn.alpn == "" && cn.det.Protocol == sniff.HTTP2) {
		s.http[cn.dir].serveH2(hc)
	} else {
		s.http[cn.dir].serve(hc)
	}
	st.Active.Add(-1)
	st.Completed.Add(1)
	sent, recv := hc.read.Load(), hc.written.Load()
	st.BytesSent.Add(sent)
	st.BytesRecv.Add(recv)
	var endedBy error
	if hc.headerTimedOut() {
		endedBy = errHeaderTimeout
		st.HeaderTimeouts.Add(1)
		if ce, n := s.warnHeaderTimeout.Check(s.log, zap.WarnLevel, "closing connections whose request headers did not arrive in time"); ce != nil {
			ce.Write(cn.fields(0, zap.Duration("header_timeout", s.cfg.HeaderTimeout), zap.Int64("suppressed", n))...)
		}
	}
	s.logConnection(cn, sent, recv, endedBy)
}

// errHeaderTimeout ends an HTTP connection whose client did not send a
// request's headers within the header time-out.
var errHeaderTimeout = errors.New("request headers did not arrive within the header time-out")

// fields are the log fields that say which connection cn is, then extra,
// with room for spare more.
func (cn *conn) fields(spare int, extra ...zap.Field) []zap.Field {
	// One allocation: sized for everything, and the addresses by pointer
	// (cn is on the heap already), not boxed each in an interface.
	f := make([]zap.Field, 0, 5+len(extra)+spare)
	f = append(f,
		zap.Stringer("direction", cn.dir),
		zap.Stringer("src", cn.c.RemoteAddr()),
		zap.Stringer("dst", &cn.dst),
		zap.Stringer("upstream", &cn.target),
	)
	if cn.peer != "" {
		f = append(f, zap.String("peer", cn.peer))
	}
	return append(f, extra...)
}

// logConnection writes the one line of a connection, at debug level: a
// busy sidecar makes thousands a second, and the access log (per request)
// and the metrics are the records at info. What is rare and wrong (a
// refused or denied connection, a handshake that failed, a header
// time-out) is logged where it happens, at info or warn.
func (s *Server) logConnection(cn *conn, sent, received int64, endedBy error) {
	ce := s.log.Check(zap.DebugLevel, "connection")
	if ce == nil {
		return
	}
	fields := cn.fields(2,
		zap.Stringer("protocol", cn.det.Protocol),
		zap.String("detection", cn.det.how()),
		zap.Int64("bytes_sent", sent),
		zap.Int64("bytes_received", received),
		zap.Duration("duration", time.Since(cn.start)),
	)
	if cn.alpn != "" {
		fields = append(fields, zap.String("mtls", cn.alpn))
	}
	if endedBy != nil {
		fields = append(fields, zap.NamedError("ended_by", endedBy))
	}
	ce.Write(fields...)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
