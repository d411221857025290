package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Response body states.
const (
	reading int32 = iota
	ended         // read to its end; Read returns io.EOF
	closed        // closed or failed; the connection is gone
)

// body is a response's body: at its end the connection is handed back
// (finish), closing it before closes the connection.
type body struct {
	c     *conn
	rc    io.ReadCloser // http.ReadResponse's, reading from c.br
	req   *http.Request
	res   *http.Response
	w     *bodyWrite
	stop  func() bool
	state atomic.Int32
}

func (b *body) Read(p []byte) (int, error) {
	switch b.state.Load() {
	case ended:
		return 0, io.EOF
	case closed:
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		// The trailers, if any, are in res.Trailer now.
		if b.state.CompareAndSwap(reading, ended) {
			b.c.finish(b.req, b.res, b.w, b.stop, true)
		}
	case err != nil:
		if b.c.canceled.Load() {
			err = b.req.Context().Err()
		}
		b.end()
	}
	return n, err
}

// Close closes the connection unless the body was read to its end: what
// is left of it is not read.
func (b *body) Close() error {
	b.end()
	return nil
}

func (b *body) end() {
	if b.state.CompareAndSwap(reading, closed) {
		b.c.finish(b.req, b.res, b.w, b.stop, false)
	}
}

// upgraded is a 101 response's body: the connection, the bytes the
// response's reader buffered first.
type upgraded struct {
	br *bufio.Reader // nil once drained
	nc net.Conn
}

func (u *upgraded) Read(p []byte) (int, error) {
	if u.br != nil {
		if u.br.Buffered() > 0 {
			return u.br.Read(p)
		}
		u.br = nil
	}
	return u.nc.Read(p)
}

func (u *upgraded) Write(p []byte) (int, error) { return u.nc.Write(p) }

func (u *upgraded) Close() error { return u.nc.Close() }

// continueBody holds an "Expect: 100-continue" request's body back until
// the server's 100, its final answer (then the body is not sent), or the
// time-out.
type continueBody struct {
	io.ReadCloser
	cont    <-chan bool
	done    <-chan struct{} // the request context's
	timeout time.Duration
	decided bool
	// refused: the server answered before its 100, so the body was not
	// sent (net/http's Request.Write hides the error's identity).
	refused bool
}

func (b *continueBody) Read(p []byte) (int, error) {
	if !b.decided {
		b.decided = true
		t := time.NewTimer(b.timeout)
		defer t.Stop()
		select {
		case ok := <-b.cont:
			if !ok {
				b.refused = true
				return 0, errContinueRefused
			}
		case <-t.C:
		case <-b.done:
			b.refused = true
			return 0, errContinueRefused
		}
	}
	return b.ReadCloser.Read(p)
}
