// Package h1 is pillion's HTTP/1.1 client: the connection management of the
// proxy's HTTP/1.1 pool, on net/http's wire code. A request is serialized
// by (*http.Request).Write and its answer parsed by http.ReadResponse; what
// this package adds is the connections around them, kept alive per
// address, and the goroutines it does not start.
//
// net/http's Transport gives every connection a reader and a writer
// goroutine, so that each request crosses to two other goroutines and
// back. Here the goroutine that calls RoundTrip writes the request and
// reads the response itself whenever the request cannot block it: a
// request without a body, or whose body has all arrived (CompleteBody,
// proxy/h2's server says so of the bodies it holds). Only a body still
// streaming in is written from a goroutine of its own, while the caller
// reads the answer, which may come before the body's end.
//
// An idle connection is watched by no one: a server's close of it is
// noticed when it is next used. A request that then fails before any byte
// of its answer is sent again on a new connection, as net/http does, if
// its body can be sent again and it was not written or is idempotent; a
// request that could not be sent again first has its connection checked
// for a close the server already sent (Linux).
package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"syscall"
	"time"
)

// Defaults for Transport's fields.
const (
	// DefaultMaxIdlePerHost is net/http's default.
	DefaultMaxIdlePerHost = 2
	// DefaultBufferSize is the size of a connection's read buffer and of
	// the buffers requests are written through.
	DefaultBufferSize = 4 << 10
	// DefaultMaxResponseHeaderBytes is net/http's Transport's limit.
	DefaultMaxResponseHeaderBytes = 10 << 20
)

// maxHeldBody is the largest complete request body written by the caller's
// goroutine, with the request's head.
const maxHeldBody = 64 << 10

// CompleteBody is a request body that can tell it has all arrived (see
// proxy/h2's CompleteBody): reading it will not block.
type CompleteBody interface {
	// Complete reports whether the body's end has arrived, and how many
	// bytes are left to read before it.
	Complete() (size int, ok bool)
}

// Transport sends HTTP/1.1 requests on keep-alive connections it pools per
// address (the request URL's Host). The zero value is ready to use, with
// the defaults each field states; a Transport is safe for concurrent use,
// and its fields must not change once it is in use.
type Transport struct {
	// Dial connects to addr; nil means a net.Dialer's DialContext over
	// TCP. Its error is returned wrapped, unchanged.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// MaxConnsPerHost caps the connections to an address, busy, idle and
	// being dialled; a request beyond waits for one to be free, bounded
	// by its context. Zero: no cap.
	MaxConnsPerHost int
	// MaxIdlePerHost caps the idle connections kept per address; zero
	// means DefaultMaxIdlePerHost.
	MaxIdlePerHost int
	// IdleTimeout closes a connection idle this long; zero: never.
	IdleTimeout time.Duration
	// ExpectContinueTimeout is how long a request with "Expect:
	// 100-continue" and a body waits for the server's 100 (or final
	// answer) before it sends the body anyway; zero sends it at once.
	ExpectContinueTimeout time.Duration
	// ReadBufferSize and WriteBufferSize size the buffers; zero means
	// DefaultBufferSize.
	ReadBufferSize, WriteBufferSize int
	// MaxResponseHeaderBytes bounds the bytes read for a request's
	// response heads, informational ones included; zero means
	// DefaultMaxResponseHeaderBytes.
	MaxResponseHeaderBytes int64

	mu    sync.Mutex
	hosts map[string]*host // by address; an entry lives while it has connections or waiters

	writers sync.Pool // *bufio.Writer, held only while a request is written
}

// RoundTrip sends req on a pooled connection to req.URL.Host, or a new
// one, and returns its response, or an error. The response's body must be
// read to its end or closed: at its end the connection goes back to the
// pool. A 101 Switching Protocols response's body is the connection
// itself, an io.ReadWriteCloser that has left the pool. The request's body
// is closed, even on an error.
//
// Of the request's httptrace.ClientTrace, GotConn is called with each
// connection the request goes on, Got1xxResponse with each informational
// (1xx) response, and (*http.Request).Write calls those of writing.
//
// The request's context bounds the wait for a connection, the exchange
// and the response's body: when it ends, the connection closes and the
// context's error is returned (or the body's Read returns it).
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if req.URL == nil || req.URL.Host == "" {
		closeBody(req)
		return nil, errors.New("h1: request has no host to send it to")
	}
	trace := httptrace.ContextClientTrace(ctx)
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			closeBody(req)
			return nil, err
		}
		// Only on a connection the server has not closed, nor written to
		// unasked (a 408 before it closed), as far as the kernel knows:
		// net/http's reader goroutine per connection found those out
		// while the connection was idle.
		c, err := t.getConn(ctx, req.URL.Host)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		reused := c.reused
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: c.nc, Reused: reused, WasIdle: reused})
		}
		res, f := c.roundTrip(req, trace)
		if f == nil {
			return res, nil
		}
		// Again while it is reused connections that fail under it, as
		// net/http does, within reason.
		if attempt == maxResends || !reused || !f.retry || !canRetry(req, f.unwritten) {
			return nil, f.err
		}
		if req, err = rewind(req); err != nil {
			return nil, err
		}
	}
}

// CloseIdleConnections closes the connections no request is using. It does
// not stop the Transport: later requests dial anew.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	var idle []*conn
	for _, h := range t.hosts {
		for i, c := range h.idle {
			c.idle = false
			idle = append(idle, c)
			h.idle[i] = nil
		}
		h.idle = h.idle[:0]
	}
	t.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// failure is why a request failed on a connection, and whether it may go
// again on another.
// maxResends bounds the times a request is sent again after reused
// connections failed under it.
const maxResends = 8

// ProtocolError is an answer that is not HTTP/1.1 as RFC 9112 has it: a
// malformed status line or header, a bad length, a head too large, too
// many informational responses.
type ProtocolError struct{ Err error }

func (e *ProtocolError) Error() string { return e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// isNetError tells a failure of the connection that is not a kind
// isConnFailure knows (a time-out, a closed socket).
func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}

type failure struct {
	err error
	// retry: nothing of the response was read, and the connection failed
	// (not the request's body or context): it may have been closed by the
	// server while idle.
	retry bool
	// unwritten: not a byte of the request reached the connection.
	unwritten bool
}

// canRetry tells whether req may be sent again after it failed on a reused
// connection: its body can be had again, and either none of it was
// written or its method is idempotent (net/http's rule: the server may
// have acted on a POST it received).
func canRetry(req *http.Request, unwritten bool) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	if unwritten {
		return true
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, ok := req.Header["Idempotency-Key"]
	if !ok {
		_, ok = req.Header["X-Idempotency-Key"]
	}
	return ok
}

// rewind returns req with a new copy of its body, to be sent again.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r := *req
	r.Body = body
	return &r, nil
}

// isConnFailure tells the errors of a connection the server closed.
func isConnFailure(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func (t *Transport) getWriter(w *conn) *bufio.Writer {
	if bw, ok := t.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, orDefault(t.WriteBufferSize, DefaultBufferSize))
}

func (t *Transport) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	t.writers.Put(bw)
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}
