// Package h2 is the HTTP/2 that pillion speaks between sidecars: a client
// (Transport) and a server (Server) on golang.org/x/net/http2's Framer and
// hpack. Each connection has one reader loop; there is no writer
// goroutine: whoever has frames to send writes them, and frames that
// become ready together (a request's HEADERS and DATA, the frames of many
// streams) leave in one write, one TLS record and one syscall (writer.go).
// Flow control and stream limits are RFC 9113's; failures are x/net's
// types (http2.StreamError, http2.ConnectionError, http2.GoAwayError), so
// that callers tell a refused stream from a reset one.
package h2

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// What pillion's side of a connection advertises.
const (
	// streamWindow is the flow-control window of each stream: what a peer
	// may send on one stream before its reader took it. It bounds a
	// stream's buffered body.
	streamWindow = 1 << 20
	// connWindow bounds what all streams of a connection buffer together.
	connWindow = 4 << 20
	// maxHeaderListSize is the largest header block taken (the HTTP
	// servers' limit, 64 KiB, and room for the pseudo-headers).
	maxHeaderListSize = 64<<10 + 1<<10
	// initialWindow is the protocol's window before SETTINGS say
	// otherwise.
	initialWindow = 65535
	// maxWindow is the largest window RFC 9113 allows.
	maxWindow = 1<<31 - 1
)

// role is what a client and a server do differently with the frames the
// reader loop reads.
type role interface {
	// open handles a header block on a stream that is not open: a
	// request, on a server.
	open(f *http2.MetaHeadersFrame) error
	// idle reports whether stream id was never opened (RFC 9113 §5.1).
	idle(id uint32) bool
	// goAway handles the peer's GOAWAY.
	goAway(f *http2.GoAwayFrame)
	// pingAck handles the answer to a PING of ours.
	pingAck(data [8]byte)
	// closed is told why the connection ended, once, after every stream
	// was told.
	closed(err error)
	// lastPeerStream is the last stream the peer opened, which a GOAWAY
	// covers.
	lastPeerStream() uint32
}

// events is what a stream's owner is told.
type events interface {
	// headers handles a header block on the open stream: a response, an
	// informational response or trailers.
	headers(f *http2.MetaHeadersFrame) error
	// ended is told that the stream was reset or its connection lost.
	ended(err error)
}

// conn is what a client and a server connection share: the frames, the
// streams and the flow control.
type conn struct {
	nc   net.Conn
	fr   *http2.Framer // reads; only the reader loop uses it
	w    *writer
	role role

	mu      sync.Mutex
	changed sync.Cond // a send window grew, a stream ended, or the connection did
	streams map[uint32]*stream
	// sendWindow is what may still be sent on the connection;
	// peerStreamWindow, each new stream's.
	sendWindow       int64
	peerStreamWindow int64
	// peerMaxStreams is the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
	peerMaxStreams uint32
	// recvWindow is what the peer may still send on the connection, and
	// unacked what was read and not yet given back to it.
	recvWindow, unacked int64
	err                 error // why the connection ended; nil while it runs
	// draining: no new streams (a GOAWAY went or came); the connection
	// closes when its last stream ends.
	draining bool
	// lenient: frames on closed streams are ignored (a client's).
	lenient bool
	done    chan struct{}
	// settled is closed once the peer's first SETTINGS were applied.
	settled     chan struct{}
	settledOnce sync.Once
	// reset holds the last streams this side reset, whose frames in
	// flight are ignored (RFC 9113 §5.1, "closed").
	resetIDs [32]uint32
	resetAt  int
	// lastFrame is when the reader loop last read a frame (Unix ns).
	lastFrame atomic.Int64
}

func newConn(nc net.Conn, bufs *Buffers, r role) *conn {
	c := &conn{
		nc:               nc,
		w:                newWriter(nc, bufs),
		role:             r,
		streams:          make(map[uint32]*stream),
		sendWindow:       initialWindow,
		peerStreamWindow: initialWindow,
		peerMaxStreams:   math.MaxUint32,
		recvWindow:       initialWindow,
		done:             make(chan struct{}),
		settled:          make(chan struct{}),
	}
	c.changed.L = &c.mu
	var rd io.Reader = nc
	if _, ok := nc.(*tls.Conn); !ok {
		// A TLS connection reads whole records into its own buffer.
		rd = bufio.NewReaderSize(nc, 4<<10)
	}
	c.fr = http2.NewFramer(nil, rd)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = maxHeaderListSize
	// We advertise no SETTINGS_MAX_FRAME_SIZE: a larger frame is the
	// peer's FRAME_SIZE_ERROR (RFC 9113 §4.2), not one to read.
	c.fr.SetMaxReadFrameSize(http2DefaultMaxFrame)
	c.fr.SetReuseFrames()
	return c
}

// start appends pillion's SETTINGS and the connection window's growth:
// the first frames on a connection (after a client's preface). c.w is
// batched.
func (c *conn) start(maxStreams uint32) {
	c.w.settings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	)
	c.w.windowUpdate(0, connWindow-initialWindow)
	c.recvWindow = connWindow
}

// stream is one stream of a connection.
type stream struct {
	id   uint32
	c    *conn
	body pipe // what the peer sends
	ev   events

	// Under c.mu:
	sendWindow  int64
	recvWindow  int64 // what the peer may still send on it
	unacked     int64 // read and not yet given back
	remoteEnded bool  // the peer sent END_STREAM, or the stream was reset
	localEnded  bool  // END_STREAM or RST_STREAM sent
	resetErr    error // why the stream was reset; writes fail with it

	// wantLen is the peer's content-length (-1: none), gotLen what DATA
	// carried: a mismatch is a malformed message (RFC 9113 §8.1.1).
	// The reader loop's.
	wantLen, gotLen int64
}

// newStream registers stream id. c.mu is held.
func (c *conn) newStream(id uint32, ev events) *stream {
	s := &stream{id: id, c: c, ev: ev, sendWindow: c.peerStreamWindow, recvWindow: streamWindow, wantLen: -1}
	s.body.init(s)
	c.streams[id] = s
	return s
}

// forget drops s once both sides ended it. c.mu is held.
func (c *conn) forget(s *stream) {
	if s.localEnded && s.remoteEnded {
		delete(c.streams, s.id)
		c.changed.Broadcast()
	}
}

// closeIfDrained closes a draining connection whose last stream ended,
// once what was written is on the wire. Whoever ends a stream calls it
// after its last frame's flush.
func (c *conn) closeIfDrained() {
	c.mu.Lock()
	done := c.draining && len(c.streams) == 0 && c.err == nil
	c.mu.Unlock()
	if done {
		c.w.drain()
		c.close(errDrained)
	}
}

var errDrained = errors.New("h2: the connection was drained")

// lastRead is when a frame was last read.
func (c *conn) lastRead() time.Time { return time.Unix(0, c.lastFrame.Load()) }

// drop gives n bytes nobody will read back to the connection's window.
func (s *stream) drop(n int) { s.c.creditConn(int64(n)) }

// credit gives n bytes the reader took back to the peer: to the
// connection's window and the stream's, in a WINDOW_UPDATE once half a
// window was taken (a small message moves no window at all).
func (s *stream) credit(n int) {
	c := s.c
	var connInc, streamInc int64
	c.mu.Lock()
	c.unacked += int64(n)
	if c.unacked >= connWindow/2 {
		connInc, c.unacked = c.unacked, 0
		c.recvWindow += connInc
	}
	if !s.remoteEnded {
		s.unacked += int64(n)
		if s.unacked >= streamWindow/2 {
			streamInc, s.unacked = s.unacked, 0
			s.recvWindow += streamInc
		}
	}
	c.mu.Unlock()
	if connInc == 0 && streamInc == 0 {
		return
	}
	c.w.batch()
	if connInc > 0 {
		c.w.windowUpdate(0, uint32(connInc))
	}
	if streamInc > 0 {
		c.w.windowUpdate(s.id, uint32(streamInc))
	}
	_ = c.w.flush()
}

// writeHeaders sends a header block on s.
func (c *conn) writeHeaders(s *stream, fields []string, end bool) error {
	c.mu.Lock()
	if err := s.writable(); err != nil {
		c.mu.Unlock()
		return err
	}
	if end {
		s.localEnded = true
		c.forget(s)
	}
	c.mu.Unlock()
	c.w.batch()
	c.w.headers(s.id, end, fields)
	err := c.w.flush()
	c.closeIfDrained()
	return err
}

// appendTrailers appends s's trailers, which end it. c.w is batched.
func (c *conn) appendTrailers(s *stream, fields []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	s.localEnded = true
	c.forget(s)
	c.w.headers(s.id, true, fields)
	return nil
}

// writeHeadersData sends a header block and, in the same write, what of
// data the windows allow (END_STREAM on the last frame when end); the
// rest goes as writeData sends it.
func (c *conn) writeHeadersData(s *stream, fields []string, data []byte, end bool) error {
	c.w.batch()
	n, err := c.appendHeadersData(s, fields, data, end)
	if err != nil {
		c.w.mu.Unlock()
		return err
	}
	if err := c.w.flush(); err != nil || n == len(data) {
		c.closeIfDrained()
		return err // all of it went, and the END_STREAM if end
	}
	return c.writeData(s, data[n:], end)
}

// appendHeadersData appends s's header block and the DATA frames of what
// of data the windows allow, and returns how much that was. c.w is
// batched (the caller flushes), and c.mu is not held.
func (c *conn) appendHeadersData(s *stream, fields []string, data []byte, end bool) (int, error) {
	c.mu.Lock()
	if err := s.writable(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	n := int(min(int64(len(data)), c.window(s)))
	c.sendWindow -= int64(n)
	s.sendWindow -= int64(n)
	last := end && n == len(data)
	if last {
		s.localEnded = true
		c.forget(s)
	}
	c.mu.Unlock()
	c.w.headers(s.id, last && n == 0, fields)
	maxFrame := int(c.w.maxFrame.Load())
	for p := data[:n]; len(p) > 0; {
		k := min(len(p), maxFrame)
		c.w.data(s.id, last && k == len(p), p[:k])
		p = p[k:]
	}
	return n, nil
}

// writeData sends p on s in DATA frames as the flow-control windows
// allow, waiting for them to open, with END_STREAM on the last frame when
// end.
func (c *conn) writeData(s *stream, p []byte, end bool) error {
	for {
		c.mu.Lock()
		var n int
		for {
			if err := s.writable(); err != nil {
				c.mu.Unlock()
				return err
			}
			n = int(min(int64(len(p)), c.window(s)))
			if n > 0 || len(p) == 0 {
				break
			}
			c.changed.Wait()
		}
		n = min(n, int(c.w.maxFrame.Load()))
		c.sendWindow -= int64(n)
		s.sendWindow -= int64(n)
		last := end && n == len(p)
		if last {
			s.localEnded = true
			c.forget(s)
		}
		c.mu.Unlock()
		c.w.batch()
		c.w.data(s.id, last, p[:n])
		err := c.w.flush()
		if last || err != nil {
			c.closeIfDrained()
			return err
		}
		p = p[n:]
		if len(p) == 0 && !end {
			return nil
		}
	}
}

// window is what may be sent on s now: the smaller of its window and the
// connection's, never below zero (a peer lowering
// SETTINGS_INITIAL_WINDOW_SIZE makes a stream's negative, RFC 9113
// §6.9.2). c.mu is held.
func (c *conn) window(s *stream) int64 {
	return max(min(c.sendWindow, s.sendWindow), 0)
}

// writable returns why nothing more can be sent on s, if so. c.mu is held.
func (s *stream) writable() error {
	switch {
	case s.resetErr != nil:
		return s.resetErr
	case s.c.err != nil:
		return s.c.err
	case s.localEnded:
		return errStreamEnded
	}
	return nil
}

var errStreamEnded = errors.New("h2: the stream was already ended")

// reset ends s with RST_STREAM code, unless it ended already; its body's
// reader and its owner get err.
func (c *conn) reset(s *stream, code http2.ErrCode, err error) {
	c.mu.Lock()
	if s.localEnded && s.remoteEnded {
		c.mu.Unlock()
		return
	}
	s.localEnded, s.remoteEnded = true, true
	s.resetErr = err
	c.forget(s)
	c.noteReset(s.id)
	last := c.draining && len(c.streams) == 0
	c.mu.Unlock()
	c.w.batch()
	c.w.rst(s.id, code)
	c.w.flushAsync() // the reader loop calls it
	s.body.abort(err)
	s.ev.ended(err)
	if last {
		go c.closeIfDrained() // reset runs in the reader loop too, which must not wait for writes
	}
}

// noteReset remembers that this side reset stream id. c.mu is held.
func (c *conn) noteReset(id uint32) {
	c.resetIDs[c.resetAt%len(c.resetIDs)] = id
	c.resetAt++
}

// wasReset reports whether this side reset stream id lately.
func (c *conn) wasReset(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.resetIDs {
		if r == id {
			return true
		}
	}
	return false
}

// count returns how many streams are open.
func (c *conn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// readLoop reads frames until the connection fails or is closed, then
// ends every stream and tells the role.
func (c *conn) readLoop() {
	err := c.readFrames()
	if errors.Is(err, http2.ErrFrameTooLarge) {
		err = http2.ConnectionError(http2.ErrCodeFrameSize)
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.mu.Lock()
		c.draining = true // no new stream behind the GOAWAY
		c.mu.Unlock()
		// Bounded, like everything after it: the peer may not be reading.
		_ = c.nc.SetDeadline(time.Now().Add(lingerTimeout))
		c.w.batch()
		c.w.goAway(c.role.lastPeerStream(), http2.ErrCode(ce), nil)
		c.w.flushAsync()
		c.linger()
	}
	c.close(err)
}

// lingerTimeout bounds linger.
const lingerTimeout = time.Second

// linger waits for what was flushed to be written, half-closes the
// connection and reads what the peer still sends until it closes or
// lingerTimeout passed: closing a TCP connection with unread data resets
// it, and the peer could lose our last frames (a GOAWAY) to the reset.
func (c *conn) linger() {
	// One deadline for both ways (a read deadline alone would read as a
	// header time-out to the proxy's connection).
	_ = c.nc.SetDeadline(time.Now().Add(lingerTimeout))
	c.w.drain()
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, c.nc)
}

// close ends the connection with err (once) and every stream on it.
func (c *conn) close(err error) {
	if err == nil {
		err = net.ErrClosed
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := c.streams
	c.streams = map[uint32]*stream{}
	c.changed.Broadcast()
	c.mu.Unlock()
	c.w.fail(err)
	_ = c.nc.Close()
	for _, s := range streams {
		s.body.abort(err)
		s.ev.ended(err)
	}
	c.role.closed(err)
	close(c.done)
}

func (c *conn) readFrames() error {
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 §3.4
	}
	for {
		c.lastFrame.Store(time.Now().UnixNano())
		if err := c.handle(f); err != nil {
			return err
		}
		if f, err = c.fr.ReadFrame(); err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetID(se.StreamID, se.Code, se)
				if f, err = c.nextAfterStreamError(); err != nil {
					return err
				}
				continue
			}
			return err
		}
	}
}

// nextAfterStreamError reads on after a frame the Framer refused as a
// stream error.
func (c *conn) nextAfterStreamError() (http2.Frame, error) {
	for {
		f, err := c.fr.ReadFrame()
		var se http2.StreamError
		if !errors.As(err, &se) {
			return f, err
		}
		c.resetID(se.StreamID, se.Code, se)
	}
}

// resetID resets stream id, known or not.
func (c *conn) resetID(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	s := c.streams[id]
	if s == nil {
		c.noteReset(id)
	}
	c.mu.Unlock()
	if s != nil {
		c.reset(s, code, err)
		return
	}
	c.w.batch()
	c.w.rst(id, code)
	c.w.flushAsync() // the reader loop calls it
}

func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.RSTStreamFrame:
		return c.handleRST(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.role.pingAck(f.Data)
			return nil
		}
		c.w.batch()
		c.w.ping(true, f.Data)
		c.w.flushAsync() // the reader loop calls it
	case *http2.GoAwayFrame:
		c.role.goAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is off
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetID(f.StreamID, http2.ErrCodeProtocol, http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol})
		}
	}
	return nil // unknown frame types are ignored (RFC 9113 §4.1)
}

func (c *conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		switch {
		case c.role.idle(f.StreamID):
			return c.role.open(f)
		case c.closedQuietly(f.StreamID):
			return nil
		}
		return http2.ConnectionError(http2.ErrCodeStreamClosed)
	}
	c.mu.Lock()
	ended := s.remoteEnded
	c.mu.Unlock()
	if ended {
		c.resetID(f.StreamID, http2.ErrCodeStreamClosed, http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeStreamClosed})
		return nil
	}
	if err := s.ev.headers(f); err != nil {
		return err
	}
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	return nil
}

// closedQuietly reports whether frames on stream id, which is closed, are
// to be ignored: on a client, always (it cannot know which of the streams
// it cancelled the server still answers), on a server when it reset the
// stream lately.
func (c *conn) closedQuietly(id uint32) bool { return c.lenient || c.wasReset(id) }

// remoteEnd ends s's body after END_STREAM, or resets s when the DATA did
// not add up to its content-length. The reader loop's.
func (c *conn) remoteEnd(s *stream) {
	if s.wantLen >= 0 && s.gotLen != s.wantLen {
		c.reset(s, http2.ErrCodeProtocol, fmt.Errorf("h2: stream %d: content-length %d, %d bytes of DATA", s.id, s.wantLen, s.gotLen))
		return
	}
	c.mu.Lock()
	s.remoteEnded = true
	c.forget(s)
	last := c.draining && len(c.streams) == 0
	c.mu.Unlock()
	s.body.end(io.EOF)
	if last {
		go c.closeIfDrained() // not in the reader loop: it waits for writes
	}
}

func (c *conn) handleData(f *http2.DataFrame) error {
	n := int64(f.Length) // padding included
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= n
	s := c.streams[f.StreamID]
	if s == nil || s.remoteEnded {
		c.mu.Unlock()
		if s == nil && c.role.idle(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.creditConn(n)
		if !c.closedQuietly(f.StreamID) {
			c.resetID(f.StreamID, http2.ErrCodeStreamClosed, http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeStreamClosed})
		}
		return nil
	}
	data := f.Data()
	if n > s.recvWindow || s.wantLen >= 0 && s.gotLen+int64(len(data)) > s.wantLen {
		c.mu.Unlock()
		c.creditConn(n)
		if n > s.recvWindow {
			c.reset(s, http2.ErrCodeFlowControl, http2.StreamError{StreamID: s.id, Code: http2.ErrCodeFlowControl})
		} else {
			c.reset(s, http2.ErrCodeProtocol, fmt.Errorf("h2: stream %d: more DATA than its content-length %d", s.id, s.wantLen))
		}
		return nil
	}
	s.recvWindow -= n
	c.mu.Unlock()
	if pad := n - int64(len(data)); pad > 0 {
		c.creditConn(pad)
	}
	s.gotLen += int64(len(data))
	if len(data) > 0 {
		s.body.write(data)
	}
	if f.StreamEnded() {
		c.remoteEnd(s)
	}
	return nil
}

// creditConn gives back n bytes of the connection's window that no stream
// will read.
func (c *conn) creditConn(n int64) {
	c.mu.Lock()
	c.unacked += n
	var inc int64
	if c.unacked >= connWindow/2 {
		inc, c.unacked = c.unacked, 0
		c.recvWindow += inc
	}
	c.mu.Unlock()
	if inc > 0 {
		c.w.batch()
		c.w.windowUpdate(0, uint32(inc))
		c.w.flushAsync() // the reader loop calls it
	}
}

func (c *conn) handleRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	c.mu.Unlock()
	if s == nil {
		if c.role.idle(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	err := http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode, Cause: errPeerReset}
	c.mu.Lock()
	complete := s.remoteEnded // a whole message arrived: its reader may finish it
	s.localEnded, s.remoteEnded = true, true
	s.resetErr = err
	c.forget(s)
	last := c.draining && len(c.streams) == 0
	c.mu.Unlock()
	if !complete {
		s.body.abort(err)
	}
	s.ev.ended(err)
	if last {
		go c.closeIfDrained()
	}
	return nil
}

var errPeerReset = errors.New("the peer reset the stream")

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		if c.sendWindow+inc > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWindow += inc
		c.changed.Broadcast()
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if c.role.idle(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	if s.sendWindow+inc > maxWindow {
		c.mu.Unlock()
		c.reset(s, http2.ErrCodeFlowControl, http2.StreamError{StreamID: s.id, Code: http2.ErrCodeFlowControl})
		c.mu.Lock()
		return nil
	}
	s.sendWindow += inc
	c.changed.Broadcast()
	return nil
}

func (c *conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxFrameSize:
			c.w.setMaxFrame(st.Val)
		case http2.SettingHeaderTableSize:
			c.w.setHeaderTableSize(st.Val)
		case http2.SettingMaxConcurrentStreams:
			c.mu.Lock()
			c.peerMaxStreams = st.Val
			c.changed.Broadcast()
			c.mu.Unlock()
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			defer c.mu.Unlock()
			delta := int64(st.Val) - c.peerStreamWindow
			for _, s := range c.streams {
				if s.sendWindow+delta > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			for _, s := range c.streams {
				s.sendWindow += delta
			}
			c.peerStreamWindow = int64(st.Val)
			c.changed.Broadcast()
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.settledOnce.Do(func() { close(c.settled) })
	c.w.batch()
	c.w.settingsAck()
	c.w.flushAsync()
	return nil
}
