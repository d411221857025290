package h2

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxQueuedControl bounds the batches the reader loop may add while a
// write is under way (its acknowledgements and resets), as x/net's
// maxQueuedControlFrames.
const maxQueuedControl = 10000

// errControlFlood ends a connection whose peer sent more frames that need
// an answer than it read answers.
var errControlFlood = errors.New("h2: the peer sends frames that need an answer faster than it reads the answers")

// maxPending is how many bytes of frames may wait for the connection
// before a writer waits for them to drain: the back-pressure of a peer that
// reads slowly.
const maxPending = 256 << 10

// writer puts the frames of every stream of one connection on the wire,
// in order, and coalesces them: the goroutine that finds the connection
// idle writes, and the frames other goroutines add meanwhile go out
// together in its next write (one TLS record and one syscall for, say, the
// HEADERS and DATA of several streams). Nobody waits on a goroutine of the
// writer's own: there is none.
type writer struct {
	nc   net.Conn
	bufs *Buffers

	mu      sync.Mutex
	drained sync.Cond // a write finished
	// maxFrame is the peer's SETTINGS_MAX_FRAME_SIZE; read without w.mu
	// by writers sizing their DATA.
	maxFrame atomic.Int64
	pending  []byte // frames not yet written; nil when there are none
	mark     int    // where the frames of the batch under way begin in pending
	queued   int    // flushAsync batches added while a write was under way
	flushing bool   // a goroutine is writing
	err      error  // the first write error: every later write fails with it
	fr       *http2.Framer
	hbuf     bytes.Buffer // the header block being encoded
	enc      *hpack.Encoder
}

func newWriter(nc net.Conn, bufs *Buffers) *writer {
	w := &writer{nc: nc, bufs: bufs}
	w.maxFrame.Store(http2DefaultMaxFrame)
	w.drained.L = &w.mu
	w.fr = http2.NewFramer((*pendingWriter)(w), nil)
	w.enc = hpack.NewEncoder(&w.hbuf)
	return w
}

// http2DefaultMaxFrame is the protocol's initial SETTINGS_MAX_FRAME_SIZE.
const http2DefaultMaxFrame = 16 << 10

// pendingWriter is the writer as the Framer's io.Writer: it appends to
// the pending frames. w.mu is held.
type pendingWriter writer

func (p *pendingWriter) Write(b []byte) (int, error) {
	w := (*writer)(p)
	w.grow(len(b))
	w.pending = append(w.pending, b...)
	return len(b), nil
}

// grow makes room for n more bytes, taking a buffer from the pool when
// there is none. w.mu is held.
func (w *writer) grow(n int) {
	if w.pending == nil {
		w.pending = w.bufs.get()
	}
	if cap(w.pending)-len(w.pending) < n {
		w.pending = append(w.pending, make([]byte, n)...)[:len(w.pending)]
	}
}

// batch locks the writer for a caller that adds frames; flush or
// flushAsync ends it. Between the two the caller uses the frame methods
// below, which only append.
func (w *writer) batch() {
	w.mu.Lock()
	w.mark = len(w.pending)
}

// flush ends a batch: it writes what is pending unless another goroutine
// is writing (which will write it next), and waits while too much is
// pending. It fails when the batch's frames were not written: the
// connection failed before their write began (a *writeError that says
// so), or in it (one that says some may have gone). Frames handed to
// another goroutine's write are as good as sent, as with a buffered
// writer: a failure there ends the connection, which its streams are told.
func (w *writer) flush() error {
	if err := w.err; err != nil {
		w.mu.Unlock()
		return &writeError{err: err}
	}
	if w.flushing {
		for len(w.pending) > maxPending && w.err == nil {
			w.drained.Wait()
		}
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return &writeError{err: err, maybeSent: true}
		}
		return nil
	}
	w.flushing = true
	return w.writePending(w.mark)
}

// flushAsync ends a batch without waiting on the connection: when no
// write is under way it starts one on a goroutine of its own. The reader
// loop ends its batches so (an acknowledgement, a reset, a window): were
// it to write, or wait for a write, while the peer's reader loop does the
// same, neither would read again.
func (w *writer) flushAsync() {
	if w.err == nil && w.flushing {
		// The peer is not taking what is written: it may not make the
		// reader loop queue its answers (PING and SETTINGS
		// acknowledgements, resets) without bound (CVE-2019-9512,
		// -9514, -9515). x/net's limit.
		if w.queued++; w.queued > maxQueuedControl {
			w.err = errControlFlood
			w.mu.Unlock()
			_ = w.nc.Close()
			return
		}
	}
	if w.err != nil || w.flushing || len(w.pending) == 0 {
		w.mu.Unlock()
		return
	}
	w.flushing = true
	w.mu.Unlock()
	go func() {
		w.mu.Lock()
		_ = w.writePending(0)
	}()
}

// writePending writes what is pending until nothing is, as the goroutine
// that set w.flushing, then unlocks. Its error is the first write's when
// that write failed past mark (where the caller's frames began).
func (w *writer) writePending(mark int) error {
	var err error
	for first := true; len(w.pending) > 0 && w.err == nil; first = false {
		out := w.pending
		w.pending, w.queued = nil, 0
		w.mu.Unlock()
		n, werr := w.nc.Write(out)
		w.bufs.put(out)
		w.mu.Lock()
		if werr != nil {
			w.err = werr
			if first {
				err = &writeError{err: werr, maybeSent: n > mark}
			}
		}
		w.drained.Broadcast()
	}
	w.flushing = false
	w.drained.Broadcast()
	w.mu.Unlock()
	return err
}

// writeError is a flush that failed: whether the frames may have reached
// the peer (a write that failed part way through them, or another
// goroutine's write of them) or surely did not.
type writeError struct {
	err       error
	maybeSent bool
}

func (e *writeError) Error() string { return "h2: writing frames: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// drain waits until no frame is pending or being written, or writing
// failed: what was flushed before is on the wire (a graceful close).
func (w *writer) drain() {
	w.mu.Lock()
	for (w.flushing || len(w.pending) > 0) && w.err == nil {
		w.drained.Wait()
	}
	w.mu.Unlock()
}

// fail makes every later write fail with err (the connection is closing).
func (w *writer) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.drained.Broadcast()
	w.mu.Unlock()
}

// setMaxFrame takes the peer's SETTINGS_MAX_FRAME_SIZE.
func (w *writer) setMaxFrame(n uint32) {
	w.maxFrame.Store(int64(n))
}

// setHeaderTableSize takes the peer's SETTINGS_HEADER_TABLE_SIZE.
func (w *writer) setHeaderTableSize(n uint32) {
	w.mu.Lock()
	w.enc.SetMaxDynamicTableSizeLimit(n)
	w.mu.Unlock()
}

// The frame methods append one frame; w.mu is held (batch).

// headers encodes fields (name, value pairs, names lower case) as one
// header block on stream id, in HEADERS and CONTINUATION frames no larger
// than the peer takes.
func (w *writer) headers(id uint32, endStream bool, fields []string) {
	w.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = w.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	block := w.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), int(w.maxFrame.Load()))
		frag, end := block[:n], n == len(block)
		block = block[n:]
		if first {
			_ = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: end})
			first = false
		} else {
			_ = w.fr.WriteContinuation(id, end, frag)
		}
	}
}

// data appends one DATA frame; len(p) is within the peer's frame size and
// the flow-control windows. The frame header is written here, and p
// copied once, straight into the pending frames.
func (w *writer) data(id uint32, endStream bool, p []byte) {
	w.grow(9 + len(p))
	var flags byte
	if endStream {
		flags = byte(http2.FlagDataEndStream)
	}
	n := len(p)
	w.pending = append(w.pending,
		byte(n>>16), byte(n>>8), byte(n), byte(http2.FrameData), flags,
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
	w.pending = append(w.pending, p...)
}

func (w *writer) rst(id uint32, code http2.ErrCode) { _ = w.fr.WriteRSTStream(id, code) }

func (w *writer) windowUpdate(id, n uint32) { _ = w.fr.WriteWindowUpdate(id, n) }

func (w *writer) settings(s ...http2.Setting) { _ = w.fr.WriteSettings(s...) }

func (w *writer) settingsAck() { _ = w.fr.WriteSettingsAck() }

func (w *writer) ping(ack bool, data [8]byte) { _ = w.fr.WritePing(ack, data) }

func (w *writer) goAway(last uint32, code http2.ErrCode, debug []byte) {
	_ = w.fr.WriteGoAway(last, code, debug)
}

// preface appends the client connection preface.
func (w *writer) preface() {
	w.grow(len(http2.ClientPreface))
	w.pending = append(w.pending, http2.ClientPreface...)
}

// Buffers holds the buffers of pending frames of every connection of one
// owner (a Transport or a Server), so that an idle connection holds none.
type Buffers struct{ p sync.Pool }

const bufSize = 32 << 10

func (b *Buffers) get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return (*v)[:0]
	}
	return make([]byte, 0, bufSize)
}

// put takes back a buffer of pending frames, unless it grew beyond what
// is worth keeping.
func (b *Buffers) put(buf []byte) {
	if cap(buf) <= 4*bufSize {
		buf = buf[:0]
		b.p.Put(&buf)
	}
}
