package proxy

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/proxy/h2"
	"github.com/pillionmesh/pillion/proxy/relay"
)

// Limits of the HTTP servers that face the application (outbound) and the
// peers (inbound).
const (
	// maxHeaderBytes is Envoy's default limit (60 KiB) rounded up: larger
	// request headers get 431.
	maxHeaderBytes = 64 << 10
	// downstreamIdleTimeout closes a client's keep-alive connection idle
	// this long (Envoy's default); longer than any pool's idle time-out,
	// so that the client, not the proxy, closes idle connections.
	downstreamIdleTimeout = time.Hour
	// maxConcurrentStreams is what one HTTP/2 connection may carry at once;
	// a pool needing more opens another connection.
	maxConcurrentStreams = 250
)

// httpServer serves the HTTP connections of one direction: HTTP/1.x with
// an http.Server, fed by a listener of handed-over connections; HTTP/2
// (h2c with prior knowledge, and mTLS from peer sidecars) with pillion's
// own server, proxy/h2, which costs less per request than net/http's
// (bench/README.md).
type httpServer struct {
	srv  *http.Server
	lis  *handoff
	h2   *h2.Server
	base context.Context // every request's context derives from it
	done chan struct{}   // closed when srv.Serve returned
}

// newHTTPServer starts the HTTP servers of one direction, which serve
// every request with handler, in a context derived from base, and time out
// HTTP/1 request headers after headerTimeout. They log under log.
func newHTTPServer(handler http.Handler, headerTimeout time.Duration, base context.Context, log *zap.Logger) *httpServer {
	hs := &httpServer{lis: newHandoff(), base: base, done: make(chan struct{})}
	hs.h2 = &h2.Server{
		Handler:              handler,
		MaxConcurrentStreams: maxConcurrentStreams,
		IdleTimeout:          downstreamIdleTimeout,
		Logger:               log.Named("h2"),
	}
	hs.srv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       downstreamIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// OPTIONS * goes to the application like any request, and every
		// HTTP/1 request to serveRequest: framing counts on it.
		DisableGeneralOptionsHandler: true,
		BaseContext:                  func(net.Listener) context.Context { return hs.base },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c.(*httpConn).meta)
		},
		// net/http reports clients' protocol errors here: routine, not
		// the operator's concern above debug.
		ErrorLog: mustStdLogAt(log.Named("http"), zapcore.DebugLevel),
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	hs.srv.Protocols = &protos
	go func() {
		defer close(hs.done)
		_ = hs.srv.Serve(hs.lis)
	}()
	return hs
}

// mustStdLogAt is zap.NewStdLogAt, which fails only for a level zap does
// not know.
func mustStdLogAt(l *zap.Logger, level zapcore.Level) *log.Logger {
	std, err := zap.NewStdLogAt(l, level)
	if err != nil {
		panic(err)
	}
	return std
}

// serve serves c, detected as HTTP/1.x, until it is closed.
func (hs *httpServer) serve(c *httpConn) {
	if !hs.lis.push(c) {
		relay.Reset(c.Conn) // shutting down
		return
	}
	<-c.closed
}

// serveH2 serves c, HTTP/2, until it is closed.
func (hs *httpServer) serveH2(c *httpConn) {
	hs.h2.ServeConn(context.WithValue(hs.base, connKey{}, c.meta), c)
}

// shutdown stops accepting handed-over connections, closes idle ones,
// sends GOAWAY on HTTP/2 ones, and returns when they are all closed or ctx
// ends.
func (hs *httpServer) shutdown(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.h2.Shutdown(ctx) })
	_ = hs.srv.Shutdown(ctx)
	<-hs.done
	wg.Wait()
}

// connMeta is what the proxy knows of an HTTP connection.
type connMeta struct {
	src, dst netip.AddrPort
	peer     string   // the peer sidecar's SPIFFE ID, over mTLS
	framing  *framing // HTTP/1 connections' request framing; nil on HTTP/2
}

type connKey struct{}

// httpConn is an accepted connection handed to an HTTP server: it counts
// the bytes, tells whether the server gave up on a request's headers, and
// closing it tells serve it is done. The server sees it as cleartext even
// when it is mTLS from a peer sidecar (which the proxy terminated), so it
// speaks HTTP/2 with prior knowledge on it.
type httpConn struct {
	net.Conn // the accepted connection (with what detection peeked first), or TLS over it
	meta     connMeta

	read, written atomic.Int64
	// headerTimeout is the server's ReadHeaderTimeout. The server sets a
	// read deadline that far ahead when it starts reading a request's
	// headers, and other deadlines otherwise: the
	// keep-alive idle time (an hour), none, or one in the past to stop a
	// background read. headerDeadline is whether the deadline now set is
	// the headers' one; timedOut, whether a read ran into it.
	headerTimeout  time.Duration
	headerDeadline atomic.Bool
	timedOut       atomic.Bool

	closeOnce sync.Once
	closed    chan struct{}
}

func newHTTPConn(c net.Conn, meta connMeta, headerTimeout time.Duration) *httpConn {
	return &httpConn{Conn: c, meta: meta, headerTimeout: headerTimeout, closed: make(chan struct{})}
}

func (c *httpConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	if c.meta.framing != nil {
		c.meta.framing.read(p[:n])
	}
	if err != nil && c.headerDeadline.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		c.timedOut.Store(true)
	}
	return n, err
}

func (c *httpConn) SetReadDeadline(t time.Time) error {
	ahead := time.Until(t)
	c.headerDeadline.Store(ahead > 0 && ahead <= c.headerTimeout)
	return c.Conn.SetReadDeadline(t)
}

func (c *httpConn) SetDeadline(t time.Time) error {
	c.headerDeadline.Store(false)
	return c.Conn.SetDeadline(t)
}

// headerTimedOut reports whether the server closed c because a request's
// headers did not arrive within the header time-out.
func (c *httpConn) headerTimedOut() bool { return c.timedOut.Load() }

func (c *httpConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *httpConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { close(c.closed) })
	return err
}

// handoff is a net.Listener whose connections are pushed to it by the
// proxy's own accept loop once detection found HTTP/1.x.
type handoff struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoff() *handoff { return &handoff{ch: make(chan net.Conn), done: make(chan struct{})} }

// push hands c to the server; false when the listener is closed.
func (h *handoff) push(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoff) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "handoff" }
