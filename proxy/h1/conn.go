package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"
)

// max1xx bounds the informational responses read before a final one, as
// net/http does (it allows 5 plus a header budget).
const max1xx = 10

// writeWait is how long a response's end waits for its request's body to
// be written before the connection is given up instead of reused
// (net/http's maxWriteWaitBeforeConnReuse).
const writeWait = 50 * time.Millisecond

// conn is one connection to a server, carrying one request at a time.
type conn struct {
	t  *Transport
	h  *host
	nc net.Conn
	br *bufio.Reader // the connection's: it may hold the next response's first bytes
	lr limitReader   // under br: bounds the bytes of a response's heads

	// Of the request on the connection, written by the goroutine that
	// writes it: the bytes written and the connection's write error.
	written int64
	werr    error

	canceled  atomic.Bool // the request's context ended and closed the connection
	closeOnce sync.Once

	// Guarded by the Transport's mu.
	reused    bool // it served a request before this one
	idle      bool
	idleSince time.Time
	timer     *time.Timer // the idle timer, made on the first idle spell
}

// Write writes to the connection, counting the bytes and keeping the
// first error, for the request's writers.
func (c *conn) Write(p []byte) (int, error) {
	n, err := c.nc.Write(p)
	c.written += int64(n)
	if err != nil && c.werr == nil {
		c.werr = err
	}
	return n, err
}

// close closes the connection and counts it out of its host, once.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		_ = c.nc.Close()
		c.t.mu.Lock()
		if c.timer != nil {
			c.timer.Stop()
		}
		c.t.mu.Unlock()
		c.t.release(c.h)
	})
}

// detach counts the connection out of its host without closing it: an
// upgraded connection belongs to the response's body.
func (c *conn) detach() {
	c.closeOnce.Do(func() { c.t.release(c.h) })
}

// cancel is the request context's end: the connection closes under the
// request, whose reads and writes fail.
func (c *conn) cancel() {
	c.canceled.Store(true)
	c.close()
}

// bodyWrite is a request body being written by a goroutine of its own.
type bodyWrite struct {
	done chan struct{} // closed when the write ended, err set
	err  error
	// cont carries the decision on an "Expect: 100-continue" request's
	// body: true for a 100, false for a final answer. Nil without one.
	cont chan bool
}

// finished reports whether the write ended, and how.
func (w *bodyWrite) finished() (bool, error) {
	select {
	case <-w.done:
		return true, w.err
	default:
		return false, nil
	}
}

// errContinueRefused stops a body the server answered before its 100.
var errContinueRefused = errors.New("h1: server answered before 100 Continue; body not sent")

// roundTrip sends req on c and reads its response's head. On a failure c
// is closed.
func (c *conn) roundTrip(req *http.Request, trace *httptrace.ClientTrace) (*http.Response, *failure) {
	ctx := req.Context()
	c.written, c.werr = 0, nil
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, c.cancel)
	}
	var w *bodyWrite
	if writeNow(req) {
		if err := c.writeRequest(req); err != nil {
			c.close()
			if stop != nil {
				stop()
			}
			if c.canceled.Load() {
				return nil, &failure{err: ctx.Err()}
			}
			// The connection's own failure may be a server's idle close;
			// the body's is the request's.
			return nil, &failure{err: err, retry: c.werr != nil, unwritten: c.written == 0}
		}
	} else {
		w = c.startWrite(req)
	}
	res, f := c.readResponse(req, w, trace)
	if f != nil {
		c.close()
		if stop != nil {
			stop()
		}
		return nil, f
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		return c.upgrade(res, w, stop)
	}
	if res.Body == http.NoBody {
		c.finish(req, res, w, stop, true)
		return res, nil
	}
	res.Body = &body{c: c, rc: res.Body, req: req, res: res, w: w, stop: stop}
	return res, nil
}

// writeNow tells a request the caller's goroutine writes whole before it
// reads the answer: one whose body cannot keep it waiting.
func writeNow(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	cb, ok := req.Body.(CompleteBody)
	if !ok || expectsContinue(req) {
		return false
	}
	n, done := cb.Complete()
	return done && n <= maxHeldBody && (req.ContentLength < 0 || int64(n) == req.ContentLength)
}

func expectsContinue(req *http.Request) bool {
	v := req.Header["Expect"]
	return len(v) == 1 && asciiEqualFold(v[0], "100-continue")
}

// heldWriter hides *bufio.Writer from (*http.Request).Write, which then
// neither flushes the head apart from the body nor wraps it in a buffer
// of its own: a request written at once goes out in one write.
type heldWriter struct{ *bufio.Writer }

// writeRequest writes req whole, with the caller's goroutine.
func (c *conn) writeRequest(req *http.Request) error {
	bw := c.t.getWriter(c)
	err := req.Write(heldWriter{bw})
	if err == nil {
		err = bw.Flush()
	}
	c.t.putWriter(bw)
	return err
}

// startWrite writes req from a goroutine of its own, whose end the
// returned bodyWrite tells.
func (c *conn) startWrite(req *http.Request) *bodyWrite {
	w := &bodyWrite{done: make(chan struct{})}
	var cb *continueBody
	if expectsContinue(req) && c.t.ExpectContinueTimeout > 0 {
		w.cont = make(chan bool, 1)
		r := *req
		cb = &continueBody{ReadCloser: req.Body, cont: w.cont, timeout: c.t.ExpectContinueTimeout, done: req.Context().Done()}
		r.Body = cb
		req = &r
	}
	go func() {
		bw := c.t.getWriter(c)
		// The bufio.Writer itself: Write flushes the head before the
		// body, which may be slow to come or wait for a 100.
		err := req.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		c.t.putWriter(bw)
		// The body failed: the server would wait for the rest of it. A
		// write error leaves the connection to the reader, which may
		// still find the server's answer. Decided before done: after it,
		// the connection may be the next request's.
		bodyFailed := err != nil && c.werr == nil && (cb == nil || !cb.refused)
		w.err = err
		close(w.done)
		if bodyFailed {
			c.close()
		}
	}()
	return w
}

// readResponse reads the final response's head, passing informational
// ones to the request's trace.
func (c *conn) readResponse(req *http.Request, w *bodyWrite, trace *httptrace.ClientTrace) (*http.Response, *failure) {
	limit := c.t.MaxResponseHeaderBytes
	if limit <= 0 {
		limit = DefaultMaxResponseHeaderBytes
	}
	c.lr.n = limit
	defer func() { c.lr.n = unlimited }()
	if _, err := c.br.Peek(1); err != nil {
		return nil, c.readFailure(req, w, err, true)
	}
	for n := 0; ; n++ {
		res, err := http.ReadResponse(c.br, req)
		if err != nil {
			if !isConnFailure(err) && !c.canceled.Load() && !isNetError(err) {
				err = &ProtocolError{err}
			}
			return nil, c.readFailure(req, w, err, false)
		}
		code := res.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			if w != nil && w.cont != nil {
				select {
				case w.cont <- false:
				default:
				}
			}
			return res, nil
		}
		if n == max1xx {
			return nil, &failure{err: &ProtocolError{fmt.Errorf("h1: more than %d informational responses", max1xx)}}
		}
		if code == http.StatusContinue && w != nil && w.cont != nil {
			select {
			case w.cont <- true:
			default:
			}
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(res.Header)); err != nil {
				return nil, &failure{err: err}
			}
		}
	}
}

// readFailure is the failure of reading a response; first: not a byte
// of it was read.
func (c *conn) readFailure(req *http.Request, w *bodyWrite, err error, first bool) *failure {
	if c.canceled.Load() {
		return &failure{err: req.Context().Err()}
	}
	f := &failure{err: err, retry: first && isConnFailure(err)}
	if w == nil {
		f.unwritten = c.written == 0
		return f
	}
	if done, werr := w.finished(); done {
		f.unwritten = c.written == 0
		if werr != nil && c.werr == nil {
			// The body failed, and closed the connection under the read.
			return &failure{err: werr}
		}
	}
	return f
}

// upgrade hands the connection to a 101 response's body.
func (c *conn) upgrade(res *http.Response, w *bodyWrite, stop func() bool) (*http.Response, *failure) {
	if stop != nil && !stop() {
		c.close()
		return nil, &failure{err: res.Request.Context().Err()}
	}
	if w != nil {
		if done, err := w.finished(); !done || err != nil {
			c.close()
			return nil, &failure{err: errors.New("h1: 101 Switching Protocols before the request's body was sent")}
		}
	}
	c.detach()
	res.Body = &upgraded{br: c.br, nc: c.nc}
	return res, nil
}

// finish ends the request on c: the connection goes back to the pool if
// the exchange ended cleanly and both sides allow it, else it closes.
func (c *conn) finish(req *http.Request, res *http.Response, w *bodyWrite, stop func() bool, clean bool) {
	if stop != nil && !stop() {
		clean = false // the context's end closed the connection
	}
	if clean && w != nil {
		done, err := w.finished()
		if !done {
			t := time.NewTimer(writeWait)
			select {
			case <-w.done:
				done, err = true, w.err
			case <-t.C:
			}
			t.Stop()
		}
		clean = done && err == nil
	}
	if clean && !res.Close && !req.Close {
		c.t.putIdle(c)
		return
	}
	c.close()
}

// asciiEqualFold is strings.EqualFold for ASCII, as header tokens are.
func asciiEqualFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// unlimited is a limitReader's budget outside a response's heads.
const unlimited = 1<<63 - 1

// limitReader reads r, failing once n bytes were read: net/http's
// Transport's bound on response heads, which http.ReadResponse lacks.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

var errHeadTooLarge = errors.New("h1: response headers exceed MaxResponseHeaderBytes")
