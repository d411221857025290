package retry

import (
	"errors"
	"io"
	"sync"
)

// MaxReplayBody is the most request body bytes the filter keeps so that it
// can send them again.
const MaxReplayBody = 64 << 10

// errRetired fails the reads of a request body by an attempt whose
// response was discarded.
var errRetired = errors.New("retry: this attempt was abandoned for another")

// replay is the request body shared by the attempts at one request. It
// reads the client's body only as the current attempt reads it, so that a
// streaming request (a gRPC stream, whose client waits for answers before
// it ends its body) flows as it would without the filter, and keeps the
// bytes read, up to MaxReplayBody, so that the next attempt can start
// over. Once the client's body has yielded more than that, the attempt
// reading it streams on, the bytes kept are dropped as soon as it has read
// them, and there is no next attempt.
//
// The transport may go on reading an attempt's body on a goroutine of its
// own after the attempt's handler returned, so only the current attempt
// reads: retire ends the reader of an attempt whose response is discarded,
// before the next attempt starts.
type replay struct {
	src   io.Reader
	srcMu sync.Mutex // held while reading src, so that its bytes are kept in order

	mu   sync.Mutex
	buf  []byte // the bytes read from src, while kept
	over bool   // src yielded more than MaxReplayBody bytes
	err  error  // src's error once it returned one, io.EOF at its end
	gen  int    // the current attempt's
}

func newReplay(src io.Reader) *replay { return &replay{src: src} }

// reader returns a reader of the whole body for the current attempt. Its
// Close does nothing: the client's body is the server's to close.
func (b *replay) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &replayReader{b: b, gen: b.gen}
}

// replayable reports whether another attempt could read the body from its
// start.
func (b *replay) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.replayableLocked()
}

func (b *replay) replayableLocked() bool {
	return !b.over && (b.err == nil || b.err == io.EOF)
}

// retire ends the current attempt's reader, so that the next attempt can
// read the body from its start. It ends nothing and returns false when the
// body is not replayable.
func (b *replay) retire() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.replayableLocked() {
		return false
	}
	b.gen++
	return true
}

// replayReader is one attempt's reader of a replay.
type replayReader struct {
	b   *replay
	gen int
	off int // in b.buf
}

func (r *replayReader) Read(p []byte) (int, error) {
	if n, err, done := r.kept(p); done {
		return n, err
	}
	b := r.b
	b.srcMu.Lock()
	defer b.srcMu.Unlock()
	// Another reader may have read src while this one waited.
	if n, err, done := r.kept(p); done {
		return n, err
	}
	b.mu.Lock()
	keep := !b.over
	if keep {
		// Never more than one byte beyond the limit: that byte says the
		// body is too long to replay.
		p = p[:min(len(p), MaxReplayBody+1-len(b.buf))]
	}
	b.mu.Unlock()

	n, err := b.src.Read(p)

	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.err = err
	}
	if keep {
		// Kept even when r was retired meanwhile: the bytes are the next
		// attempt's.
		b.buf = appendBounded(b.buf, p[:n])
		b.over = len(b.buf) > MaxReplayBody
	}
	if r.gen != b.gen {
		return 0, errRetired
	}
	if keep {
		r.off += n
		r.drop()
	}
	return n, err
}

// kept reads from the bytes kept; done is false when r must read src.
func (r *replayReader) kept(p []byte) (n int, err error, done bool) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case r.gen != b.gen:
		return 0, errRetired, true
	case r.off < len(b.buf):
		n = copy(p, b.buf[r.off:])
		r.off += n
		r.drop()
		return n, nil, true
	case b.err != nil:
		return 0, b.err, true
	}
	return 0, nil, false
}

// drop lets go of the bytes kept once the body is too long to replay and r,
// the current and last reader, has read them all. b.mu must be held.
func (r *replayReader) drop() {
	if r.b.over && r.off == len(r.b.buf) {
		r.b.buf, r.off = nil, 0
	}
}

func (r *replayReader) Close() error { return nil }

// appendBounded appends p to buf, growing it by doubling but never beyond
// MaxReplayBody+1 bytes, the most it is asked to hold.
func appendBounded(buf, p []byte) []byte {
	if need := len(buf) + len(p); need > cap(buf) {
		nb := make([]byte, len(buf), min(max(2*cap(buf), need, 4<<10), MaxReplayBody+1))
		copy(nb, buf)
		buf = nb
	}
	return append(buf, p...)
}
