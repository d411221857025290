package h2

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Transport sends requests on pooled HTTP/2 connections, one set of
// connections per address: a request takes a stream on a connection that
// has one free, and a connection is dialled when none has (one dial per
// address at a time, which every request waiting shares). It is safe for
// concurrent use.
type Transport struct {
	// Dial connects to addr (host:port) ready for HTTP/2: over TLS, the
	// handshake is done. Required.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// IdleTimeout closes a connection that carried no stream this long.
	// Zero: never.
	IdleTimeout time.Duration
	// PingInterval: a connection the peer sent nothing on this long is
	// pinged, and closed if the answer takes longer than PingTimeout.
	// Zero: never.
	PingInterval, PingTimeout time.Duration

	bufs Buffers

	mu    sync.Mutex
	conns map[string][]*clientConn
	dials map[string]*dial
}

// dial is one connection being dialled, which every request waiting for
// a stream to its address shares.
type dial struct {
	done chan struct{}
	cc   *clientConn
	err  error
}

// settingsTimeout bounds the wait for a new connection's first SETTINGS.
const settingsTimeout = 10 * time.Second

// maxRetries bounds how often a request the peer did not process is sent
// again on another connection.
const maxRetries = 5

// RoundTrip sends req to req.URL.Host and returns the response when its
// headers arrived. A request the peer did not process (a refused stream,
// a GOAWAY that did not cover it, a connection lost before it was sent)
// is sent again on another connection when its body can be; otherwise the
// error is an http2.StreamError with REFUSED_STREAM, and the caller knows
// it is safe to retry.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	rq, err := newRequest(req)
	if err != nil {
		return nil, err
	}
	trace := httptrace.ContextClientTrace(req.Context())
	for attempt := 0; ; attempt++ {
		cc, reused, err := t.conn(req.Context(), req.URL.Host)
		if errors.Is(err, errNotSent) {
			// A connection that failed in its setup carried nothing.
			if rq.resendable() && attempt < maxRetries {
				continue
			}
			return nil, http2.StreamError{Code: http2.ErrCodeRefusedStream, Cause: err}
		}
		if err != nil {
			return nil, err
		}
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: cc.nc, Reused: reused})
		}
		res, err := cc.roundTrip(rq)
		if errors.Is(err, errNotSent) && rq.resendable() && attempt < maxRetries {
			continue
		}
		if errors.Is(err, errNotSent) {
			err = http2.StreamError{Code: http2.ErrCodeRefusedStream, Cause: err}
		}
		return res, err
	}
}

// errNotSent says the peer did not process a request.
var errNotSent = errors.New("h2: the peer did not process the request")

// conn returns a connection to addr with a stream reserved for the
// caller, and whether it had carried requests before.
func (t *Transport) conn(ctx context.Context, addr string) (*clientConn, bool, error) {
	for {
		t.mu.Lock()
		for _, cc := range t.conns[addr] {
			if cc.reserve() {
				t.mu.Unlock()
				return cc, true, nil
			}
		}
		d := t.dials[addr]
		if d == nil {
			d = &dial{done: make(chan struct{})}
			if t.dials == nil {
				t.dials = make(map[string]*dial)
				t.conns = make(map[string][]*clientConn)
			}
			t.dials[addr] = d
			go t.dial(ctx, addr, d)
		}
		t.mu.Unlock()
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if d.err != nil {
			return nil, false, d.err
		}
		if d.cc.reserve() {
			return d.cc, false, nil
		}
	}
}

// dial connects to addr for d. The dial outlives the request that started
// it (others may be waiting for it), though not its values.
func (t *Transport) dial(ctx context.Context, addr string, d *dial) {
	ctx = context.WithoutCancel(ctx)
	nc, err := t.Dial(ctx, addr)
	var cc *clientConn
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, settingsTimeout)
		cc, err = t.newClientConn(ctx, nc, addr)
		cancel()
		if err != nil {
			err = fmt.Errorf("%w: %w", errNotSent, err) // it carried no request
		}
	}
	t.mu.Lock()
	delete(t.dials, addr)
	if err == nil && cc.alive() {
		t.conns[addr] = append(t.conns[addr], cc)
	}
	d.cc, d.err = cc, err
	t.mu.Unlock()
	close(d.done)
}

// remove drops cc from the pool: it takes no more streams.
func (t *Transport) remove(cc *clientConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.conns[cc.addr]
	for i, c := range conns {
		if c == cc {
			conns = append(conns[:i:i], conns[i+1:]...)
			break
		}
	}
	if len(conns) == 0 {
		delete(t.conns, cc.addr)
	} else {
		t.conns[cc.addr] = conns
	}
}

// CloseIdleConnections closes the connections that carry no stream.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	var idle []*clientConn
	for _, conns := range t.conns {
		for _, cc := range conns {
			cc.mu.Lock()
			if len(cc.streams) == 0 && cc.reserved == 0 {
				cc.draining = true
				idle = append(idle, cc)
			}
			cc.mu.Unlock()
		}
	}
	t.mu.Unlock()
	for _, cc := range idle {
		cc.shutdown(errIdle)
	}
}

var errIdle = errors.New("h2: connection closed idle")

// clientConn is one connection of a Transport.
type clientConn struct {
	*conn
	t    *Transport
	addr string

	// Under conn.mu:
	nextID   uint32
	reserved int // streams promised to callers of reserve, not yet open
	lastUsed time.Time
	pingSent time.Time // zero when no PING awaits its answer

	timer *time.Timer // the idle and liveness checks
}

func (t *Transport) newClientConn(ctx context.Context, nc net.Conn, addr string) (*clientConn, error) {
	cc := &clientConn{t: t, addr: addr, nextID: 1, lastUsed: time.Now()}
	cc.conn = newConn(nc, &t.bufs, cc)
	cc.lenient = true
	cc.w.batch()
	cc.w.preface()
	cc.start(0) // a client takes no streams the server would open
	if err := cc.w.flush(); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("h2: connection preface to %s: %w", addr, err)
	}
	go cc.readLoop()
	// The server's limits come in its first SETTINGS, which it sends at
	// once: until they are known, a burst of requests could open more
	// streams than it takes.
	select {
	case <-cc.settled:
	case <-cc.done:
		return nil, fmt.Errorf("h2: connection to %s: %w", addr, cc.err)
	case <-ctx.Done():
		cc.close(ctx.Err())
		return nil, fmt.Errorf("h2: connection to %s: no SETTINGS: %w", addr, ctx.Err())
	}
	if d := cc.checkEvery(); d > 0 {
		cc.mu.Lock()
		cc.timer = time.AfterFunc(d, cc.check)
		cc.mu.Unlock()
	}
	return cc, nil
}

// alive reports whether cc has not ended (and may go in the pool).
func (cc *clientConn) alive() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil
}

// reserve takes a stream on cc for a request to come, if cc has one free.
func (cc *clientConn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.draining || cc.err != nil || cc.nextID > maxStreamID ||
		uint64(len(cc.streams)+cc.reserved) >= uint64(cc.peerMaxStreams) {
		return false
	}
	cc.reserved++
	cc.lastUsed = time.Now()
	return true
}

// maxStreamID is the last stream id a client may open.
const maxStreamID = 1<<31 - 1

// checkEvery is how often the timer checks cc.
func (cc *clientConn) checkEvery() time.Duration {
	d := cc.t.IdleTimeout
	if p := cc.t.PingTimeout; p > 0 && cc.t.PingInterval > 0 && (d == 0 || p < d) {
		d = p
	}
	return d
}

// check closes cc when it idled IdleTimeout or did not answer a PING in
// PingTimeout, and pings it when the peer was silent PingInterval.
func (cc *clientConn) check() {
	now := time.Now()
	cc.mu.Lock()
	idle := len(cc.streams) == 0 && cc.reserved == 0 && cc.t.IdleTimeout > 0 && now.Sub(cc.lastUsed) >= cc.t.IdleTimeout
	if idle {
		cc.draining = true // decided under the lock reserve takes: no request comes between
	}
	late := !cc.pingSent.IsZero() && now.Sub(cc.pingSent) >= cc.t.PingTimeout
	silent := cc.t.PingInterval > 0 && cc.pingSent.IsZero() && now.Sub(cc.lastRead()) >= cc.t.PingInterval
	if silent {
		cc.pingSent = now
	}
	ended := cc.err != nil
	cc.mu.Unlock()
	switch {
	case ended:
		return
	case late:
		cc.close(errPingTimeout)
		return
	case idle:
		cc.shutdown(errIdle)
		return
	case silent:
		cc.w.batch()
		cc.w.ping(false, [8]byte{'p', 'i', 'l', 'l', 'i', 'o', 'n'})
		cc.w.flushAsync() // the check must come back even if the peer stopped reading
	}
	cc.timer.Reset(cc.checkEvery())
}

var errPingTimeout = errors.New("h2: the peer did not answer a PING in time")

// shutdown closes cc with a GOAWAY.
func (cc *clientConn) shutdown(err error) {
	cc.t.remove(cc)
	cc.w.batch()
	cc.w.goAway(0, http2.ErrCodeNo, nil)
	_ = cc.w.flush()
	cc.close(err)
}

// The role of a client connection.

func (cc *clientConn) open(*http2.MetaHeadersFrame) error {
	return http2.ConnectionError(http2.ErrCodeProtocol) // a server opens no streams
}

func (cc *clientConn) idle(id uint32) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return id >= cc.nextID
}

func (cc *clientConn) goAway(f *http2.GoAwayFrame) {
	cc.t.remove(cc)
	cc.mu.Lock()
	cc.draining = true
	var refused []*stream
	for id, s := range cc.streams {
		if id > f.LastStreamID {
			refused = append(refused, s)
		}
	}
	left := len(cc.streams) - len(refused)
	cc.mu.Unlock()
	for _, s := range refused {
		cc.conn.reset(s, http2.ErrCodeCancel, errNotSent)
	}
	if left == 0 {
		cc.close(errDrained)
	}
}

func (cc *clientConn) lastPeerStream() uint32 { return 0 } // a server opens none

func (cc *clientConn) pingAck([8]byte) {
	cc.mu.Lock()
	cc.pingSent = time.Time{}
	cc.mu.Unlock()
}

func (cc *clientConn) closed(error) {
	cc.t.remove(cc)
	cc.mu.Lock()
	if cc.timer != nil {
		cc.timer.Stop()
	}
	cc.mu.Unlock()
}
