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
