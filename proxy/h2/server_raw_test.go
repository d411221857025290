package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// blockUntil is a handler that answers when release is closed, and
// reports on started that it runs.
func blockUntil(started chan<- string, release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		<-release
		_, _ = io.WriteString(w, "done")
	}
}

// TestServerRefusesStreams: a stream beyond MaxConcurrentStreams is
// refused with REFUSED_STREAM; the open ones are served.
func TestServerRefusesStreams(t *testing.T) {
	started, release := make(chan string, 3), make(chan struct{})
	s := &Server{MaxConcurrentStreams: 2, Handler: blockUntil(started, release)}
	rc := dialRaw(t, serve(t, s, nil))
	rc.get(1, "/1")
	rc.get(3, "/3")
	<-started
	<-started
	rc.get(5, "/5")
	f := rc.next()
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("got %v, want RST_STREAM REFUSED_STREAM on stream 5", f)
	}
	close(release)
	ended := map[uint32]bool{}
	for len(ended) < 2 {
		switch f := rc.next().(type) {
		case *http2.DataFrame:
			ended[f.StreamID] = f.StreamEnded()
		case nil:
			t.Fatal("connection closed")
		}
	}
	if !ended[1] || !ended[3] {
		t.Errorf("streams ended %v, want 1 and 3", ended)
	}
}

// TestServerMalformed: malformed requests (RFC 9113 §8.1.1) are reset
// with PROTOCOL_ERROR, and the connection serves on.
func TestServerMalformed(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	rc := dialRaw(t, serve(t, s, nil))
	get := []string{":method", "GET", ":scheme", "http", ":authority", "test", ":path", "/"}
	with := func(more ...string) []string { return append(append([]string(nil), get...), more...) }
	id := uint32(1)
	for _, tc := range []struct {
		name   string
		fields []string
	}{
		{"no :path", get[:6]},
		{"no :method", get[2:]},
		{"bad :scheme", []string{":method", "GET", ":scheme", "ftp", ":authority", "test", ":path", "/"}},
		{"relative :path", []string{":method", "GET", ":scheme", "http", ":authority", "test", ":path", "a"}},
		{":protocol", with(":protocol", "websocket")},
		{"connection", with("connection", "keep-alive")},
		{"transfer-encoding", with("transfer-encoding", "chunked")},
		{"upgrade", with("upgrade", "h2c")},
		{"te gzip", with("te", "gzip")},
		{"host mismatch", with("host", "other")},
		{"userinfo", []string{":method", "GET", ":scheme", "http", ":authority", "u@test", ":path", "/"}},
		{"content-length without body", with("content-length", "3")},
		{"bad content-length", with("content-length", "x")},
		{"CONNECT with :path", []string{":method", "CONNECT", ":authority", "test:443", ":path", "/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc.headers(id, true, tc.fields...)
			f := rc.next()
			if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.StreamID != id || rst.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("got %v, want RST_STREAM PROTOCOL_ERROR on stream %d", f, id)
			}
			id += 2
		})
	}
	rc.headers(id, true, with("te", "trailers")...)
	if h, ok := rc.next().(*http2.MetaHeadersFrame); !ok || field(h, ":status") != "200" {
		t.Errorf("a valid request after the malformed ones: %v", h)
	}
}

// TestServerUnreadBody: a handler that returns without reading the body
// ends its response, then resets the stream with NO_ERROR (RFC 9113
// §8.1), so that the client stops sending.
func TestServerUnreadBody(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "no thanks")
	})}
	rc := dialRaw(t, serve(t, s, nil))
	rc.headers(1, false, ":method", "POST", ":scheme", "http", ":authority", "test", ":path", "/")
	if err := rc.fr.WriteData(1, false, []byte("some of the body")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		switch f := rc.next().(type) {
		case *http2.MetaHeadersFrame:
			got = append(got, "HEADERS")
		case *http2.DataFrame:
			if f.StreamEnded() {
				got = append(got, "DATA+END_STREAM")
			}
		case *http2.RSTStreamFrame:
			got = append(got, "RST_STREAM "+f.ErrCode.String())
		case nil:
			t.Fatal("connection closed")
		}
	}
	if want := []string{"HEADERS", "DATA+END_STREAM", "RST_STREAM NO_ERROR"}; !slices.Equal(got, want) {
		t.Errorf("frames %v, want %v", got, want)
	}
}

// TestServerConnectionClose: a handler's Connection: close is not sent;
// it starts a GOAWAY, the open stream still finishes, and then the
// connection closes.
func TestServerConnectionClose(t *testing.T) {
	started, release := make(chan string, 1), make(chan struct{})
	slow := blockUntil(started, release)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slow(w, r)
			return
		}
		w.Header().Set("Connection", "close")
	})}
	rc := dialRaw(t, serve(t, s, nil))
	rc.get(1, "/slow")
	<-started
	rc.get(3, "/close")
	h, ok := rc.next().(*http2.MetaHeadersFrame)
	if !ok || h.StreamID != 3 || field(h, "connection") != "" {
		t.Fatalf("got %v, want stream 3's HEADERS without connection", h)
	}
	ga, ok := rc.next().(*http2.GoAwayFrame)
	if !ok || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 3 {
		t.Fatalf("got %v, want GOAWAY NO_ERROR, last stream 3", ga)
	}
	rc.get(5, "/late") // after the GOAWAY: refused
	if rst, ok := rc.next().(*http2.RSTStreamFrame); !ok || rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("a stream after the GOAWAY: %v, want REFUSED_STREAM", rst)
	}
	close(release)
	var body []byte
	for {
		f := rc.next()
		if f == nil {
			break
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
			body = append(body, d.Data()...)
		}
	}
	if string(body) != "done" {
		t.Errorf("stream 1 got %q before the connection closed, want its whole body", body)
	}
}

// TestServerShutdown: Shutdown sends GOAWAY, waits for the open stream,
// and refuses new connections; with its context ended, it closes them.
func TestServerShutdown(t *testing.T) {
	started, release := make(chan string, 1), make(chan struct{})
	s := &Server{Handler: blockUntil(started, release)}
	addr := serve(t, s, nil)
	rc := dialRaw(t, addr)
	rc.get(1, "/")
	<-started
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	if ga, ok := rc.next().(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Fatalf("got %v, want GOAWAY NO_ERROR, last stream 1", ga)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	case <-time.After(100 * time.Millisecond):
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection after Shutdown read %d bytes, want it closed", n)
	}
	_ = nc.Close()
	close(release)
	if d, ok := rc.next().(*http2.MetaHeadersFrame); !ok || d.StreamID != 1 {
		t.Fatalf("got %v, want stream 1's response", d)
	}
	_ = rc.nc.Close() // the client's close on the GOAWAY
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the stream finished")
	}

	// A stream that never finishes: Shutdown's context ends it.
	s2 := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })}
	rc2 := dialRaw(t, serve(t, s2, nil))
	rc2.get(1, "/")
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s2.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want its context's deadline", err)
	}
	for f := rc2.next(); f != nil; f = rc2.next() {
	}
}

// TestServerIdleTimeout: a connection without a stream for IdleTimeout
// gets a GOAWAY and is closed.
func TestServerIdleTimeout(t *testing.T) {
	s := &Server{IdleTimeout: 100 * time.Millisecond, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	rc := dialRaw(t, serve(t, s, nil))
	start := time.Now()
	rc.get(1, "/")
	if h, ok := rc.next().(*http2.MetaHeadersFrame); !ok {
		t.Fatalf("got %v, want the response", h)
	}
	if ga, ok := rc.next().(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("got %v, want GOAWAY NO_ERROR", ga)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("GOAWAY after %v, before the idle timeout", d)
	}
	if f := rc.next(); f != nil {
		t.Errorf("got %v, want the connection closed", f)
	}
}

// TestServerSlowReader: a handler writing 64 MiB to a client that does
// not read (sends no WINDOW_UPDATE) blocks in Write once the window is
// used: the server holds no more than the window and its own buffer. The
// stream's reset frees it.
func TestServerSlowReader(t *testing.T) {
	var accepted atomic.Int64
	returned := make(chan error, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 16<<10)
		for accepted.Load() < 64<<20 {
			if _, err := w.Write(chunk); err != nil {
				returned <- err
				return
			}
			accepted.Add(int64(len(chunk)))
		}
		returned <- nil
	})}
	rc := dialRaw(t, serve(t, s, nil))
	rc.get(1, "/")
	var received int
	for {
		f, err := rc.read(300 * time.Millisecond)
		if err != nil {
			break // nothing more comes: the window is used
		}
		if d, ok := f.(*http2.DataFrame); ok {
			received += len(d.Data())
		}
	}
	if received != initialWindow {
		t.Errorf("the client got %d bytes, want its window, %d", received, initialWindow)
	}
	if n := accepted.Load(); n > initialWindow+bufSize+16<<10 {
		t.Errorf("the handler's writes took %d bytes, more than the window and a buffer", n)
	}
	select {
	case err := <-returned:
		t.Fatalf("the handler returned (%v); want it blocked in Write", err)
	default:
	}
	if err := rc.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-returned:
		var se http2.StreamError
		if !errors.As(err, &se) || se.Code != http2.ErrCodeCancel {
			t.Errorf("the blocked Write returned %v, want the stream's CANCEL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's Write stayed blocked after the stream's reset")
	}
}

// writeCounter records each Write on a connection.
type writeCounter struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, append([]byte(nil), p...))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// TestServerCoalesces: a handler answering 1 KiB and returning sends its
// HEADERS, DATA and END_STREAM in one write on the connection.
func TestServerCoalesces(t *testing.T) {
	conns := make(chan *writeCounter, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, 1<<10))
	})}
	addr := serve(t, s, func(nc net.Conn) net.Conn {
		wc := &writeCounter{Conn: nc}
		conns <- wc
		return wc
	})
	resp, err := h2cClient(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if len(body) != 1<<10 {
		t.Fatalf("body of %d bytes", len(body))
	}
	wc := <-conns
	wc.mu.Lock()
	defer wc.mu.Unlock()
	var withResponse []string
	for _, p := range wc.writes {
		fr := http2.NewFramer(nil, bytes.NewReader(p))
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var kinds []string
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if f.Header().StreamID != 1 {
				continue
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				kinds = append(kinds, "HEADERS")
			case *http2.DataFrame:
				kinds = append(kinds, "DATA")
				if f.StreamEnded() {
					kinds = append(kinds, "END_STREAM")
				}
			}
		}
		if len(kinds) > 0 {
			withResponse = append(withResponse, strings.Join(kinds, " "))
		}
	}
	if len(withResponse) != 1 || withResponse[0] != "HEADERS DATA END_STREAM" {
		t.Errorf("the response went in writes %q; want one, HEADERS DATA END_STREAM", withResponse)
	}
}
