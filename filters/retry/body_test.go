package retry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// readAll reads r in reads of at most chunk bytes, checking after each that
// b keeps no more than it may.
func readAll(t *testing.T, b *replay, r io.Reader, chunk int) ([]byte, error) {
	t.Helper()
	out, held, err := drain(b, r, chunk)
	if held > MaxReplayBody+1 {
		t.Fatalf("held %d bytes, more than %d", held, MaxReplayBody+1)
	}
	return out, err
}

// drain reads r in reads of at most chunk bytes and returns what it read
// and the most bytes b held after a read.
func drain(b *replay, r io.Reader, chunk int) (out []byte, held int, err error) {
	p := make([]byte, chunk)
	for {
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		b.mu.Lock()
		held = max(held, cap(b.buf))
		b.mu.Unlock()
		if err == io.EOF {
			return out, held, nil
		}
		if err != nil {
			return out, held, err
		}
	}
}

func TestReplay(t *testing.T) {
	for _, tt := range []struct {
		name       string
		size       int
		first      int // bytes the first attempt reads before it is retired; -1: all
		replayable bool
	}{
		{"empty", 0, -1, true},
		{"small, read whole", 1000, -1, true},
		{"small, read in part", 1000, 100, true},
		{"small, not read", 1000, 0, true},
		{"at the limit", MaxReplayBody, -1, true},
		{"one byte over", MaxReplayBody + 1, -1, false},
		{"long, read in part", 70 << 10, 10 << 10, true},
		{"long, read whole", 70 << 10, -1, false},
		{"long, not read", 1 << 20, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16+1)[:tt.size]
			b := newReplay(iotest.HalfReader(bytes.NewReader(want)))
			first := b.reader()
			var got []byte
			var err error
			if tt.first < 0 {
				got, err = readAll(t, b, first, 7000)
			} else {
				got, err = readAll(t, b, io.LimitReader(first, int64(tt.first)), 3000)
			}
			if err != nil || (tt.first < 0 && !bytes.Equal(got, want)) || (tt.first >= 0 && !bytes.Equal(got, want[:tt.first])) {
				t.Fatalf("first attempt read %d bytes, %v", len(got), err)
			}
			if b.replayable() != tt.replayable || b.retire() != tt.replayable {
				t.Fatalf("replayable %v, want %v", b.replayable(), tt.replayable)
			}
			if !tt.replayable {
				if b.buf != nil {
					t.Errorf("%d bytes still kept of a body read whole that cannot be replayed", len(b.buf))
				}
				return
			}
			if _, err := first.Read(make([]byte, 1)); err != errRetired {
				t.Errorf("retired reader: %v, want %v", err, errRetired)
			}
			got, err = readAll(t, b, b.reader(), 5000)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("second attempt read %d bytes intact %v, %v; want %d", len(got), bytes.Equal(got, want), err, len(want))
			}
		})
	}
}

func TestReplayError(t *testing.T) {
	broken := errors.New("client went away")
	b := newReplay(io.MultiReader(strings.NewReader("partial"), failing{broken}))
	r := b.reader()
	got, err := readAll(t, b, r, 100)
	if string(got) != "partial" || err != broken {
		t.Errorf("read %q, %v; want %q, %v", got, err, "partial", broken)
	}
	if _, err := r.Read(make([]byte, 10)); err != broken {
		t.Errorf("read again: %v, want %v", err, broken)
	}
	if b.retire() {
		t.Error("retire() = true for a body that failed")
	}
}

// gated is a reader whose first read waits for release, and that notes
// reads that overlap.
type gated struct {
	r        io.Reader
	entered  chan struct{} // closed when the first read started
	release  chan struct{}
	mu       sync.Mutex
	started  bool
	inside   int
	overlaps int
}

func (g *gated) Read(p []byte) (int, error) {
	g.mu.Lock()
	g.inside++
	if g.inside > 1 {
		g.overlaps++
	}
	first := !g.started
	g.started = true
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.release
	}
	n, err := g.r.Read(p)
	g.mu.Lock()
	g.inside--
	g.mu.Unlock()
	return n, err
}

// TestReplayAbandonedRead retires a reader while it is reading the
// client's body: what it reads is kept for the next attempt, within the
// limit, and the next attempt does not read the client's body at the same
// time.
func TestReplayAbandonedRead(t *testing.T) {
	want := bytes.Repeat([]byte("0123456789abcdef"), (70<<10)/16)
	g := &gated{r: bytes.NewReader(want), entered: make(chan struct{}), release: make(chan struct{})}
	b := newReplay(g)
	first := b.reader()
	firstErr := make(chan error, 1)
	go func() {
		_, err := first.Read(make([]byte, 128<<10))
		firstErr <- err
	}()
	<-g.entered
	if !b.retire() {
		t.Fatal("retire() = false")
	}
	type result struct {
		body []byte
		held int
		err  error
	}
	second := make(chan result, 1)
	go func() {
		body, held, err := drain(b, b.reader(), 5000)
		second <- result{body, held, err}
	}()
	time.Sleep(10 * time.Millisecond) // for the second reader to want the client's body
	close(g.release)
	if err := <-firstErr; err != errRetired {
		t.Errorf("abandoned read: %v, want %v", err, errRetired)
	}
	res := <-second
	if res.err != nil || !bytes.Equal(res.body, want) {
		t.Errorf("second attempt read %d bytes intact %v, %v; want %d", len(res.body), bytes.Equal(res.body, want), res.err, len(want))
	}
	if res.held > MaxReplayBody+1 {
		t.Errorf("held %d bytes, more than %d", res.held, MaxReplayBody+1)
	}
	if g.overlaps > 0 {
		t.Errorf("%d reads of the client's body overlapped", g.overlaps)
	}
}

// TestStreamingBody sends a request whose client waits for the upstream to
// have its first message before it ends the body, like a gRPC stream: the
// filter must not wait for the body's end before the first attempt.
func TestStreamingBody(t *testing.T) {
	f, _ := build(t, `{"attempts": 2, "on": ["connect-failure"]}`)
	pr, pw := io.Pipe()
	got := make(chan struct{})
	go func() {
		_, _ = pw.Write([]byte("ping"))
		select {
		case <-got:
		case <-time.After(5 * time.Second):
		}
		_, _ = pw.Write([]byte(" and the rest"))
		pw.Close()
	}()
	r := request(context.Background(), "POST", pr, &filters.Info{})
	r.ContentLength = -1
	w := httptest.NewRecorder()
	var body []byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			first := make([]byte, 4)
			_, _ = io.ReadFull(r.Body, first)
			close(got)
			rest, _ := io.ReadAll(r.Body)
			body = append(first, rest...)
			w.WriteHeader(http.StatusOK)
		}))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the filter waited for the body to end before the first attempt")
	}
	if string(body) != "ping and the rest" {
		t.Errorf("upstream got %q", body)
	}
}

// TestAbandonedReader keeps reading the first attempt's body after its
// handler returned, as the transport may: the second attempt still gets the
// whole body, or, when the first read too much of it, there is no second.
func TestAbandonedReader(t *testing.T) {
	for _, size := range []int{40 << 10, 70 << 10} {
		for range 20 {
			f, _ := build(t, `{"attempts": 2, "on": ["5xx"]}`)
			want := bytes.Repeat([]byte("abcdefghijklmnop"), size/16)
			info := &filters.Info{}
			r := request(context.Background(), "PUT", iotest.HalfReader(bytes.NewReader(want)), info)
			var wg sync.WaitGroup
			var second []byte
			w := httptest.NewRecorder()
			f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if info.StartAttempt() == 1 {
					_, _ = io.ReadFull(r.Body, make([]byte, 1000))
					wg.Go(func() { _, _ = io.Copy(io.Discard, r.Body) })
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				second, _ = io.ReadAll(r.Body)
				w.WriteHeader(http.StatusOK)
			}))
			wg.Wait()
			switch {
			case info.Attempts() == 2 && !bytes.Equal(second, want):
				t.Fatalf("%d bytes: second attempt got %d bytes, intact %v", size, len(second), bytes.Equal(second, want))
			case info.Attempts() == 1 && (size <= MaxReplayBody || w.Code != 503):
				t.Fatalf("%d bytes: one attempt, status %d", size, w.Code)
			}
		}
	}
}
