package h2

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
)

// The reader loop's handling of each frame it reads.

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
