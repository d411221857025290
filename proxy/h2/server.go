package h2

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
)

// DefaultMaxConcurrentStreams is a Server's stream limit when its
// MaxConcurrentStreams is zero.
const DefaultMaxConcurrentStreams = 250

// prefaceTimeout bounds the wait for a client's connection preface.
const prefaceTimeout = 10 * time.Second

// Server serves HTTP/2 on connections already accepted (and, between
// sidecars, already past their mTLS handshake): pillion's inbound side.
// What a handler sees is what net/http's HTTP/2 server gives it, but for
// these: the request context has no http.ServerContextKey or
// LocalAddrContextKey (ServeConn's context carries the proxy's values);
// there are no read or write timeouts; a response shorter than the
// content-length its handler set is reset (INTERNAL_ERROR) rather than
// ended; WriteHeader(101) is ignored (RFC 9113 §8.6).
//
// Set the fields before the first ServeConn and leave them; a Server is
// then safe for concurrent use. The zero value is not usable: Handler is
// required.
type Server struct {
	// Handler serves every request.
	Handler http.Handler
	// MaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS
	// advertised: a stream beyond it is refused with REFUSED_STREAM, which
	// a client may retry. Zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// IdleTimeout closes a connection (GOAWAY, NO_ERROR) that had no open
	// stream this long. Zero means never.
	IdleTimeout time.Duration
	// Logger gets handler panics (error level, with the stack) and the
	// peers' protocol errors (debug level). Nil means none.
	Logger *zap.Logger

	bufs Buffers // frames and response bodies of every connection
	date dateCache

	mu       sync.Mutex
	conns    map[*serverConn]struct{}
	shutdown bool
	allGone  chan struct{} // closed when shutdown and conns is empty
}

// ServeConn serves HTTP/2 on nc until the connection closes, then closes
// nc. nc starts with the client's connection preface (RFC 9113 §3.4); a
// *tls.Conn's handshake must be complete. Every request's context derives
// from ctx; ServeConn does not wait for handlers still running after the
// connection closed (their contexts are cancelled, their writes fail).
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	sc := s.newServerConn(ctx, nc)
	if !s.track(sc) {
		_ = nc.Close()
		sc.cancel()
		return
	}
	c := sc.c
	c.w.batch()
	c.start(sc.maxStreams)
	err := c.w.flush()
	if err == nil {
		err = readPreface(nc)
	}
	if err != nil {
		sc.debug("h2: no HTTP/2 connection preface", err)
		if errors.Is(err, errBadPreface) {
			c.w.batch()
			c.w.goAway(0, http2.ErrCodeProtocol, nil)
			_ = c.w.flush()
			c.linger()
		}
		c.close(err)
		return
	}
	sc.armIdle()
	c.readLoop()
}

var errBadPreface = errors.New("h2: the connection does not start with the HTTP/2 preface")

// readPreface reads the client's connection preface, before the reader
// loop's buffer does.
func readPreface(nc net.Conn) error {
	_ = nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	var b [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		return err
	}
	_ = nc.SetReadDeadline(time.Time{})
	if string(b[:]) != http2.ClientPreface {
		return errBadPreface
	}
	return nil
}

func (s *Server) newServerConn(ctx context.Context, nc net.Conn) *serverConn {
	sc := &serverConn{srv: s, maxStreams: s.MaxConcurrentStreams, log: s.Logger}
	if sc.maxStreams == 0 {
		sc.maxStreams = DefaultMaxConcurrentStreams
	}
	if sc.log == nil {
		sc.log = zap.NewNop()
	}
	sc.handler = s.Handler
	if sc.handler == nil {
		sc.handler = http.NotFoundHandler()
	}
	sc.ctx, sc.cancel = context.WithCancel(ctx)
	if a := nc.RemoteAddr(); a != nil {
		sc.remoteAddr = a.String()
	}
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		sc.tls = &st
	}
	sc.c = newConn(nc, &s.bufs, sc)
	return sc
}

// track adds sc to the connections Shutdown closes; false once it began.
func (s *Server) track(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*serverConn]struct{})
	}
	s.conns[sc] = struct{}{}
	return true
}

func (s *Server) untrack(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
	if s.shutdown && len(s.conns) == 0 && s.allGone != nil {
		close(s.allGone)
		s.allGone = nil
	}
}

// Shutdown stops the Server gracefully: later ServeConn calls close their
// connection at once; every connection served gets a GOAWAY, its open
// streams finish, and it closes when it has none. Shutdown returns nil
// when all are closed, or ctx's error when ctx ends first, after closing
// the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	var gone chan struct{}
	if len(s.conns) > 0 {
		if s.allGone == nil {
			s.allGone = make(chan struct{})
		}
		gone = s.allGone
	}
	s.mu.Unlock()
	if gone == nil {
		return nil
	}
	for _, sc := range conns {
		sc.startGoAway()
	}
	select {
	case <-gone:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	conns = conns[:0]
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.c.close(errShutdown)
	}
	return ctx.Err()
}

var errShutdown = errors.New("h2: the server shut down")

// dateCache is the Date header's value, formatted once a second.
type dateCache struct {
	p atomic.Pointer[dateValue]
}

type dateValue struct {
	sec int64
	s   string
}

func (d *dateCache) get() string {
	now := time.Now()
	if v := d.p.Load(); v != nil && v.sec == now.Unix() {
		return v.s
	}
	v := &dateValue{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
	d.p.Store(v)
	return v.s
}
