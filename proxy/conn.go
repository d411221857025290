package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/relay"
	"github.com/pillionmesh/pillion/proxy/sniff"
)

// errLoop marks a connection whose original destination is one of the
// proxy's own listeners: forwarding it would send it back to us.
var errLoop = errors.New("original destination is the proxy's own listener")

// handle proxies one accepted connection. It owns c, which the caller has
// tracked.
func (s *Server) handle(c *net.TCPConn, dir Direction) {
	start := time.Now()
	st := &s.stats.Dir[dir]

	dst, err := s.origDst(c)
	if err != nil {
		st.NoOrigDst.Add(1)
		s.log.Error("refusing connection", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Error(err))
		reset(c)
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if s.isOwnListener(dst) {
		st.Loops.Add(1)
		s.log.Warn("refusing connection", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Stringer("dst", dst), zap.Error(errLoop))
		reset(c)
		return
	}
	target := s.target(dir, dst)

	det, err := s.detect(c, dst)
	if err != nil {
		// The client reset the connection before it said enough.
		s.log.Debug("connection ended during protocol detection", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Stringer("dst", dst), zap.Error(err))
		reset(c)
		return
	}
	st.Detected[det.Protocol].Add(1)
	if det.TimedOut {
		st.SniffTimeouts.Add(1)
	}
	if det.Protocol == sniff.HTTP1 || det.Protocol == sniff.HTTP2 {
		s.handleHTTP(c, dir, dst, target, det, start)
		return
	}

	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	uc, err := d.DialContext(s.hardStop, "tcp", target.String())
	if err != nil {
		st.DialFailures.Add(1)
		s.log.Warn("upstream connect failed", zap.Stringer("direction", dir),
			zap.Stringer("src", c.RemoteAddr()), zap.Stringer("dst", dst),
			zap.Stringer("upstream", target), zap.Error(err))
		reset(c)
		return
	}
	up := uc.(*net.TCPConn)
	if !s.track(up) {
		reset(up)
		reset(c)
		return
	}
	defer s.untrack(up)
	// What detection read goes first; the relay then splices the rest.
	if _, err := up.Write(det.Peeked); err != nil {
		st.DialFailures.Add(1)
		s.log.Warn("upstream write failed", zap.Stringer("direction", dir),
			zap.Stringer("dst", dst), zap.Stringer("upstream", target), zap.Error(err))
		reset(up)
		reset(c)
		return
	}

	st.Active.Add(1)
	res := relay.TCP(c, up, s.cfg.IdleTimeout)
	st.Active.Add(-1)
	st.Completed.Add(1)
	sent := res.Sent + int64(len(det.Peeked))
	st.BytesSent.Add(sent)
	st.BytesRecv.Add(res.Received)
	s.logConnection(c, dir, dst, target, det, start, sent, res.Received, res.Err)
}

// handleHTTP hands c, detected as HTTP/1.x or h2c, to the direction's
// HTTP server and returns when the connection is closed.
func (s *Server) handleHTTP(c *net.TCPConn, dir Direction, dst, target netip.AddrPort, det detection, start time.Time) {
	st := &s.stats.Dir[dir]
	hc := newHTTPConn(c, det.Peeked, connMeta{src: addrPort(c.RemoteAddr()), dst: dst, upstream: target})
	st.Active.Add(1)
	s.http[dir].serve(hc)
	st.Active.Add(-1)
	st.Completed.Add(1)
	sent, recv := hc.read.Load(), hc.written.Load()
	st.BytesSent.Add(sent)
	st.BytesRecv.Add(recv)
	s.logConnection(c, dir, dst, target, det, start, sent, recv, nil)
}

// logConnection writes the one info line of a connection.
func (s *Server) logConnection(c *net.TCPConn, dir Direction, dst, target netip.AddrPort, det detection,
	start time.Time, sent, received int64, endedBy error) {
	ce := s.log.Check(zap.InfoLevel, "connection")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.Stringer("direction", dir),
		zap.Stringer("src", c.RemoteAddr()),
		zap.Stringer("dst", dst),
		zap.Stringer("upstream", target),
		zap.Stringer("protocol", det.Protocol),
		zap.String("detection", det.how()),
		zap.Int64("bytes_sent", sent),
		zap.Int64("bytes_received", received),
		zap.Duration("duration", time.Since(start)),
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

// target is where a connection to dst is forwarded: outbound, dst itself;
// inbound, the application on loopback at the same port.
func (s *Server) target(dir Direction, dst netip.AddrPort) netip.AddrPort {
	if dir == Outbound {
		return dst
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if dst.Addr().Is6() {
		lo = netip.IPv6Loopback()
	}
	return netip.AddrPortFrom(lo, dst.Port())
}

// isOwnListener reports whether dst is one of the proxy's listeners: a
// capture port on an address of this network namespace.
func (s *Server) isOwnListener(dst netip.AddrPort) bool {
	if dst.Port() != s.cfg.OutboundPort && dst.Port() != s.cfg.InboundPort {
		return false
	}
	a := dst.Addr()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := s.localAddrs()
	if err != nil {
		// Cannot tell: refusing is the safe side of a possible loop.
		s.log.Error("listing local addresses", zap.Error(fmt.Errorf("proxy: %w", err)))
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
	skipped bool // the port is declared opaque
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
// original destination port is declared opaque.
func (s *Server) detect(c *net.TCPConn, dst netip.AddrPort) (detection, error) {
	if s.cfg.OpaquePorts.Contains(dst.Port()) {
		return detection{skipped: true}, nil
	}
	r, err := sniff.Read(c, s.cfg.SniffTimeout)
	return detection{Result: r}, err
}
