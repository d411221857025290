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

// serverConn is one connection a Server serves: the role its conn's
// reader loop plays.
type serverConn struct {
	srv        *Server
	c          *conn
	handler    http.Handler
	log        *zap.Logger
	maxStreams uint32
	ctx        context.Context // every request's context derives from it
	cancel     context.CancelFunc
	remoteAddr string
	tls        *tls.ConnectionState

	lastID atomic.Uint32 // the highest stream the client opened (or tried to)

	mu sync.Mutex
	// active counts the handlers whose stream is open; zombies, those
	// whose stream was reset and that have not returned yet. Both count
	// against maxStreams: a client resetting streams it opened does not
	// get more handlers running than it may have streams.
	active, zombies int
	idleSince       time.Time // when active last fell to 0
	idleTimer       *time.Timer
	goingAway       bool // GOAWAY sent: no new stream is taken
	closing         bool // the graceful close started
}

var _ role = (*serverConn)(nil)

// open takes a request's header block on a new stream (reader loop).
func (sc *serverConn) open(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol) // clients open odd streams
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		sc.lastID.Store(id)
		sc.c.resetID(id, http2.ErrCodeProtocol, nil) // RFC 9113 §5.3.1
		return nil
	}
	open := sc.c.count()
	sc.mu.Lock()
	// lastID and goingAway change together (startGoAway): a stream the
	// GOAWAY covers is served, one it does not is refused, and the client
	// can tell which from the GOAWAY alone even when the refusal cannot
	// reach it (the connection closing).
	sc.lastID.Store(id)
	goingAway := sc.goingAway
	busy := uint32(open+sc.zombies) >= sc.maxStreams
	if !goingAway && !busy {
		sc.active++ // before the stream exists: its end counts down
	}
	sc.mu.Unlock()
	if goingAway || busy {
		sc.c.resetID(id, http2.ErrCodeRefusedStream, nil)
		return nil
	}
	ss := &serverStream{sc: sc}
	req, err := ss.newRequest(f)
	if err != nil {
		sc.debug("h2: malformed request", err, zap.Uint32("stream", id))
		sc.c.resetID(id, http2.ErrCodeProtocol, nil)
		sc.streamDone(false)
		return nil
	}
	handler := sc.handler
	if f.Truncated {
		handler = http.HandlerFunc(headerTooLarge)
	}
	c := sc.c
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		ss.cancel()
		sc.streamDone(false)
		return nil
	}
	s := c.newStream(id, ss)
	s.wantLen = req.ContentLength
	if f.StreamEnded() {
		s.remoteEnded = true
		s.body.end(io.EOF)
	}
	ss.s = s
	c.mu.Unlock()
	go ss.serve(handler, req)
	return nil
}

// headerTooLarge answers a request whose header block was larger than
// maxHeaderListSize, as net/http does.
func headerTooLarge(w http.ResponseWriter, _ *http.Request) {
	const status = http.StatusRequestHeaderFieldsTooLarge
	http.Error(w, http.StatusText(status), status)
}

// idle reports whether the client never opened stream id (RFC 9113
// §5.1); a server opens none.
func (sc *serverConn) idle(id uint32) bool {
	return id%2 == 0 || id > sc.lastID.Load()
}

// lastPeerStream is the last stream a GOAWAY of ours covers.
func (sc *serverConn) lastPeerStream() uint32 { return sc.lastID.Load() }

// goAway handles the client's GOAWAY: it opens no more streams, so the
// connection closes once the open ones finish, as net/http's does.
func (sc *serverConn) goAway(f *http2.GoAwayFrame) {
	if f != nil && f.ErrCode != http2.ErrCodeNo {
		sc.debug("h2: the client went away", http2.ConnectionError(f.ErrCode),
			zap.ByteString("debug", f.DebugData()))
	}
	sc.startGoAway()
}

func (sc *serverConn) pingAck([8]byte) {} // a server sends no PING

// closed is told that the connection ended.
func (sc *serverConn) closed(err error) {
	sc.mu.Lock()
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.mu.Unlock()
	sc.cancel()
	sc.srv.untrack(sc)
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, errGracefulClose) {
		sc.debug("h2: connection closed", err)
	}
}

var errGracefulClose = errors.New("h2: connection closed after GOAWAY")

// startGoAway sends a GOAWAY (NO_ERROR) covering the streams opened so
// far, once, and closes the connection when none is open.
func (sc *serverConn) startGoAway() {
	sc.mu.Lock()
	if sc.goingAway {
		sc.mu.Unlock()
		return
	}
	sc.goingAway = true
	last := sc.lastID.Load() // the streams open took before goingAway, which are served
	sc.mu.Unlock()
	c := sc.c
	c.w.batch()
	c.w.goAway(last, http2.ErrCodeNo, nil)
	c.w.flushAsync() // the reader loop may be the caller (the client's GOAWAY)
	sc.closeIfDone()
}

// closeIfDone closes the connection once it is going away and no handler
// serves an open stream: after the frames written are on the wire, and
// after the client's own close, or lingerTimeout.
func (sc *serverConn) closeIfDone() {
	sc.mu.Lock()
	if !sc.goingAway || sc.active > 0 || sc.closing {
		sc.mu.Unlock()
		return
	}
	sc.closing = true
	sc.mu.Unlock()
	go func() {
		c := sc.c
		_ = c.nc.SetWriteDeadline(time.Now().Add(lingerTimeout))
		c.w.drain()
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		// The client closes on seeing the GOAWAY with nothing open; the
		// reader loop then ends. Closing first could lose our last frames
		// to a TCP reset, if frames of the client's were still unread.
		t := time.NewTimer(lingerTimeout)
		defer t.Stop()
		select {
		case <-c.done:
		case <-t.C:
			c.close(errGracefulClose)
		}
	}()
}

// armIdle starts the idle timeout of a connection that has no stream.
func (sc *serverConn) armIdle() {
	d := sc.srv.IdleTimeout
	if d <= 0 {
		return
	}
	sc.mu.Lock()
	sc.idleSince = time.Now()
	sc.idleTimer = time.AfterFunc(d, sc.checkIdle)
	sc.mu.Unlock()
}

// checkIdle runs when the idle timer fires: a connection idle since long
// enough goes away; another checks again when it could be.
func (sc *serverConn) checkIdle() {
	d := sc.srv.IdleTimeout
	sc.mu.Lock()
	if sc.closing {
		sc.mu.Unlock()
		return
	}
	if sc.active > 0 {
		sc.idleTimer.Reset(d)
		sc.mu.Unlock()
		return
	}
	if left := d - time.Since(sc.idleSince); left > 0 {
		sc.idleTimer.Reset(left)
		sc.mu.Unlock()
		return
	}
	sc.mu.Unlock()
	sc.startGoAway()
}

// streamDone is told that a handler no longer serves an open stream: it
// returned, or its stream ended first (a zombie, until it returns).
func (sc *serverConn) streamDone(zombie bool) {
	sc.mu.Lock()
	sc.active--
	if zombie {
		sc.zombies++
	}
	if sc.active == 0 && sc.idleTimer != nil {
		sc.idleSince = time.Now()
	}
	sc.mu.Unlock()
	sc.closeIfDone()
}

// zombieDone is told that a zombie handler returned.
func (sc *serverConn) zombieDone() {
	sc.mu.Lock()
	sc.zombies--
	sc.mu.Unlock()
}

// debug logs a protocol error of the client's, or a connection's end.
func (sc *serverConn) debug(msg string, err error, fields ...zap.Field) {
	if ce := sc.log.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(append(fields, zap.String("remote", sc.remoteAddr), zap.Error(err))...)
	}
}
