// Package relay copies bytes both ways between two connections, the way a
// transparent proxy must: on the kernel's zero-copy path when both ends are
// TCP (splice(2) on Linux, which net.TCPConn.ReadFrom uses), with half-close
// carried across (for TLS, as close_notify) and a reset or error on either
// side ending both.
package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pillionmesh/pillion/proxy/bufpool"
)

// Conn is one end of a relay: a *net.TCPConn, or a *tls.Conn over one.
type Conn interface {
	net.Conn
	// CloseWrite shuts the write half: the peer reads EOF.
	CloseWrite() error
}

// Reset closes c so that its peer sees a reset (RST) rather than a clean
// end: at once, discarding unsent data. A TLS connection's TCP connection
// is reset without a close_notify.
func Reset(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok { // a *net.TCPConn, or one wrapped
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// ErrIdle ends a relay in which no byte moved either way for the idle
// time-out.
var ErrIdle = errors.New("relay: idle time-out")

// Result is what one relay did.
type Result struct {
	// Sent is the number of bytes copied from the downstream (the side that
	// connected to us) to the upstream; Received the other way.
	Sent, Received int64
	// Err is the first error that ended the relay early (a reset, a write to
	// a closed peer); nil when both directions ended with a clean EOF.
	Err error
}

// Progress reports a relay's bytes while it runs, for metrics that must
// not wait for a long connection's end. Up is called with the bytes
// copied down → up since its last call, Down with those copied up → down;
// the two may run concurrently, each never concurrently with itself, and
// every byte Result counts is reported once, before TCP returns. Through a
// buffer (a TLS end) bytes are reported as each chunk is written; between
// two TCP ends, which the kernel splices, every Every while they flow (a
// zero Every: every idle/2, or only at the end without an idle time-out).
// A spliced copy wakes to report: every Every while bytes flow, less often
// while none do, at least once a minute.
type Progress struct {
	Every    time.Duration
	Up, Down func(n int64)
}

// TCP relays between down (the accepted connection) and up (the one we
// dialled) until both directions are done, then closes both. It owns both
// connections from the moment it is called. A nil p reports nothing.
//
// When no byte has moved either way for idle, both are reset and Err is
// ErrIdle; this also ends a connection one side has half-closed and the
// other has forgotten. The check runs every idle/2 (or p.Every, if
// shorter), so the actual cut comes between idle and 1.5×idle. Zero idle
// means no limit.
//
// When one side shuts its write half (EOF), the other side's write half is
// shut too and the opposite direction carries on: a client may send a
// request, shut down writing and still read the answer. When a direction
// fails (a reset, or writing to a peer that has gone), both connections are
// closed at once, and the side that did not fail is reset rather than
// closed gracefully, so it sees the failure instead of a clean end.
//
// A direction with a TLS end copies through a buffer of bufs while bytes
// stream (between two TCP ends the kernel splices, with no buffer).
func TCP(down, up Conn, idle time.Duration, bufs *bufpool.Pool, p *Progress) Result {
	// One allocation for the relay's shared state, and one goroutine: the
	// caller's carries the upstream's bytes down.
	r := &tcpRelay{down: down, up: up, idle: idle, bufs: bufs, p: p}
	r.last.Store(time.Now().UnixNano())
	r.wg.Add(1)
	go r.sendUp()
	recv, errDown := r.copyHalf(down, up, p.down())
	if errDown != nil {
		r.abort()
	}
	r.wg.Wait()
	_ = down.Close()
	_ = up.Close()
	return Result{Sent: r.sent, Received: recv, Err: firstReal(r.errUp, errDown)}
}

func (p *Progress) up() func(int64) {
	if p == nil {
		return nil
	}
	return p.Up
}

func (p *Progress) down() func(int64) {
	if p == nil {
		return nil
	}
	return p.Down
}

// tcpRelay is the state TCP shares with the goroutine that copies down → up.
type tcpRelay struct {
	down, up  Conn
	idle      time.Duration
	bufs      *bufpool.Pool
	p         *Progress
	last      atomic.Int64 // when a byte last moved, either way (UnixNano)
	abortOnce sync.Once
	wg        sync.WaitGroup
	sent      int64 // down → up, set by sendUp before wg.Done
	errUp     error
}

// sendUp copies down → up.
func (r *tcpRelay) sendUp() {
	defer r.wg.Done()
	r.sent, r.errUp = r.copyHalf(r.up, r.down, r.p.up())
	if r.errUp != nil {
		r.abort()
	}
}

// abort resets both connections, once.
func (r *tcpRelay) abort() {
	r.abortOnce.Do(func() {
		Reset(r.down)
		Reset(r.up)
	})
}

// copyHalf copies src to dst until src's EOF, then shuts dst's write half,
// telling report (if not nil) the bytes as they move. With an idle limit,
// it reads with a deadline of idle/2 and, each time the deadline passes,
// records whether bytes moved and gives up once r.last (shared with the
// other direction) is idle old. A spliced copy that reports also stops to
// report, as Progress says.
func (r *tcpRelay) copyHalf(dst, src Conn, report func(int64)) (int64, error) {
	copyOnce := func() (int64, error) { return io.Copy(dst, src) }
	spliced := isTCP(dst) && isTCP(src)
	if !spliced {
		// With a TLS end there is no splice: copy through a buffer of our
		// own, small while the connection is quiet.
		c := &bufferedCopy{dst: dst, src: src, bufs: r.bufs, report: report}
		defer c.release()
		copyOnce = c.copy
	}
	// A spliced copy that reports wakes every Every while bytes flow, and
	// less often (doubling up to maxQuietReport) while none do, so that a
	// pool of idle connections costs few wake-ups.
	every := time.Duration(0)
	if spliced && report != nil {
		every = r.p.Every
	}
	quiet := every
	var total int64
	for {
		period := r.idle / 2
		if quiet > 0 && (period <= 0 || quiet < period) {
			period = quiet
		}
		if period > 0 {
			_ = src.SetReadDeadline(time.Now().Add(period))
		}
		// Between two *TCPConn, io.Copy ends in TCPConn.ReadFrom, which uses
		// splice(2): the bytes stay in the kernel. A deadline interrupts it
		// between chunks, losing nothing.
		n, err := copyOnce()
		total += n
		now := time.Now()
		if n > 0 {
			r.last.Store(now.UnixNano())
			if spliced && report != nil {
				report(n)
			}
			quiet = every
		} else if quiet > 0 {
			quiet = min(2*quiet, max(every, maxQuietReport))
		}
		if err == nil {
			break // EOF
		}
		if period <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return total, err
		}
		if r.idle > 0 && now.Sub(time.Unix(0, r.last.Load())) >= r.idle {
			return total, ErrIdle
		}
	}
	if err := dst.CloseWrite(); err != nil {
		return total, err
	}
	return total, nil
}

// maxQuietReport is how long a spliced copy that reports sleeps at most
// while no byte moves: bytes that start to flow after a quiet spell are
// reported within it, then every Progress.Every.
const maxQuietReport = time.Minute

// smallBufSize is the copy buffer of a quiet connection. An idle
// connection waits in Read holding its buffer: 10 000 idle connections
// would hold 640 MB of 32 KiB buffers, and hold 40 MB of these.
const smallBufSize = 2 << 10

// bufferedCopy copies src to dst through a small buffer while reads are
// small, and through a pooled 32 KiB one while they fill the buffer (a
// stream), returning it when the stream quiets down.
type bufferedCopy struct {
	dst, src Conn
	bufs     *bufpool.Pool
	report   func(int64) // nil: none
	big      *[bufpool.Size]byte
	small    [smallBufSize]byte
}

// copy copies until src's EOF (nil) or an error, as io.Copy.
func (c *bufferedCopy) copy() (int64, error) {
	var total int64
	for {
		buf := c.small[:]
		if c.big != nil {
			buf = c.big[:]
		}
		n, err := c.src.Read(buf)
		if n > 0 {
			w, werr := c.dst.Write(buf[:n])
			total += int64(w)
			if c.report != nil && w > 0 {
				c.report(int64(w))
			}
			switch {
			case werr != nil:
				return total, werr
			case w != n:
				return total, io.ErrShortWrite
			}
		}
		switch {
		case c.big == nil && n == len(buf):
			c.big = c.bufs.Get()
		case c.big != nil && n < smallBufSize:
			c.release()
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// release returns the big buffer to the pool, if held.
func (c *bufferedCopy) release() {
	if c.big != nil {
		c.bufs.Put(c.big)
		c.big = nil
	}
}

func isTCP(c Conn) bool {
	_, ok := c.(*net.TCPConn)
	return ok
}

// firstReal returns the first error that is not a consequence of our own
// abort (use of a closed connection).
func firstReal(errs ...error) error {
	var closed error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed):
			if closed == nil {
				closed = err
			}
		default:
			return err
		}
	}
	return closed
}
