package h2

import (
	"io"
	"sync"
)

// pipe holds the DATA a stream received until its reader takes it. Its
// size is bounded by the stream's flow-control window: the reader loop
// never writes more than the peer was allowed to send.
type pipe struct {
	mu     sync.Mutex
	ready  sync.Cond // data arrived, or the pipe ended
	buf    []byte
	off    int   // buf[off:] is unread
	err    error // after the unread data: io.EOF at END_STREAM, or why the stream broke
	closed bool  // the reader closed it: what arrives is dropped
	// flow is told, outside the lock, how many bytes the reader took
	// (credit) and how many nobody will read (drop: a closed or aborted
	// pipe). Flow control gives the first back to the stream and the
	// connection, the second to the connection alone: a body nobody reads
	// gets no more.
	flow interface {
		credit(n int)
		drop(n int)
	}
}

func (p *pipe) init(flow interface {
	credit(int)
	drop(int)
}) {
	p.ready.L = &p.mu
	p.flow = flow
}

// write appends b (the reader loop's frame, copied). It reports false when
// the reader closed the pipe; the bytes are then credited at once.
func (p *pipe) write(b []byte) bool {
	p.mu.Lock()
	if p.closed || p.err != nil {
		p.mu.Unlock()
		p.flow.drop(len(b))
		return false
	}
	if p.off > 0 && len(p.buf)+len(b) > cap(p.buf) {
		// Move the unread part to the front rather than grow: a reader
		// that lags keeps a buffer of what the window lets in, not of
		// everything that passed.
		p.buf = p.buf[:copy(p.buf, p.buf[p.off:])]
		p.off = 0
	}
	p.buf = append(p.buf, b...)
	p.mu.Unlock()
	p.ready.Signal()
	return true
}

// end ends the pipe after its unread data with err (io.EOF for the end of
// the stream); the first end counts.
func (p *pipe) end(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.ready.Broadcast()
}

// Read takes what arrived, waiting for something when nothing has.
func (p *pipe) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	p.mu.Lock()
	for p.off == len(p.buf) && p.err == nil && !p.closed {
		p.ready.Wait()
	}
	if p.off == len(p.buf) {
		err := p.err
		if p.closed {
			err = errClosedBody
		}
		p.release()
		p.mu.Unlock()
		return 0, err
	}
	n := copy(b, p.buf[p.off:])
	p.off += n
	if p.off == len(p.buf) {
		p.release()
	}
	p.mu.Unlock()
	p.flow.credit(n)
	return n, nil
}

// release lets go of a drained buffer that grew large: a stream that
// moved much data once does not keep its high-water mark. p.mu is held.
func (p *pipe) release() {
	if cap(p.buf) > 64<<10 {
		p.buf = nil
	} else {
		p.buf = p.buf[:0]
	}
	p.off = 0
}

// close drops what is unread (crediting it) and what arrives later. It
// reports whether the pipe had ended (io.EOF or broken) before.
func (p *pipe) close() (ended bool) {
	p.mu.Lock()
	dropped := len(p.buf) - p.off
	p.buf, p.off = nil, 0
	p.closed = true
	ended = p.err != nil
	p.mu.Unlock()
	p.ready.Broadcast()
	if dropped > 0 {
		p.flow.drop(dropped)
	}
	return ended
}

var errClosedBody = io.ErrClosedPipe

// abort ends the pipe with err at once, dropping (and crediting) what is
// unread: the stream was reset or its connection lost.
func (p *pipe) abort(err error) {
	p.mu.Lock()
	dropped := len(p.buf) - p.off
	p.buf, p.off = nil, 0
	if p.err == nil || p.err == io.EOF {
		p.err = err
	}
	p.mu.Unlock()
	p.ready.Broadcast()
	if dropped > 0 {
		p.flow.drop(dropped)
	}
}

// complete reports whether the pipe's end arrived cleanly (END_STREAM),
// and how many bytes are left to read before it.
func (p *pipe) complete() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != io.EOF || p.closed {
		return 0, false
	}
	return len(p.buf) - p.off, true
}
