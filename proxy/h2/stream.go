package h2

import (
	"errors"

	"golang.org/x/net/http2"
)

// The streams of a connection: what each may send and receive, and the
// writes that send on one.

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
	last := c.take(s, n, len(data), end)
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
		last := c.take(s, n, len(p), end)
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

// take spends n bytes of s's window and the connection's on the first n
// of left bytes to send, and ends s when they are all of them and end
// says so; it reports whether it did. c.mu is held.
func (c *conn) take(s *stream, n, left int, end bool) (last bool) {
	c.sendWindow -= int64(n)
	s.sendWindow -= int64(n)
	if last = end && n == left; last {
		s.localEnded = true
		c.forget(s)
	}
	return last
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
