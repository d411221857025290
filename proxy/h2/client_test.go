package h2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2cServer serves handler in HTTP/2 with prior knowledge on a local
// listener, with net/http's server (the reference this client is tested
// against), and returns its address.
func h2cServer(t *testing.T, handler http.Handler, maxStreams uint32) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv.Protocols = &protos
	srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: int(maxStreams)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// countingConn counts the writes on a connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func newTestTransport(writes *atomic.Int64, dials *atomic.Int64) *Transport {
	return &Transport{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		if dials != nil {
			dials.Add(1)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil || writes == nil {
			return c, err
		}
		return countingConn{c, writes}, nil
	}}
}

func echoBack(w http.ResponseWriter, r *http.Request) {
	for k, vv := range r.Trailer {
		w.Header()[http.TrailerPrefix+k] = nil
		_ = vv
	}
	w.Header().Set("X-Method", r.Method)
	w.Header().Set("X-Host", r.Host)
	n, _ := io.Copy(w, r.Body)
	for k, vv := range r.Trailer {
		w.Header()[http.TrailerPrefix+k] = vv
	}
	w.Header().Set(http.TrailerPrefix+"Echoed", strings.Repeat("x", int(n%7)))
}

func TestClientEcho(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	tr := newTestTransport(nil, nil)
	for _, size := range []int{0, 1, 1024, maxHeldBody, maxHeldBody + 1, 32 << 20} {
		body := bytes.Repeat([]byte("pillion!"), size/8+1)[:size]
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/echoBack?q=1", bytes.NewReader(body))
		req.Host = "svc.example"
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatalf("size %d: body: %v", size, err)
		}
		if sha256.Sum256(got) != sha256.Sum256(body) || res.StatusCode != 200 ||
			res.Header.Get("X-Method") != "POST" || res.Header.Get("X-Host") != "svc.example" {
			t.Fatalf("size %d: %d %v, %d bytes back", size, res.StatusCode, res.Header, len(got))
		}
		if want := strings.Repeat("x", size%7); res.Trailer.Get("Echoed") != want {
			t.Fatalf("size %d: trailer %q, want %q", size, res.Trailer.Get("Echoed"), want)
		}
	}
}

// A streamed body (no length) with trailers, as gRPC sends: the trailers
// arrive, and the response's trailers come back.
func TestClientStreamedTrailers(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	tr := newTestTransport(nil, nil)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	req.Trailer = http.Header{"Grpc-Status": nil}
	go func() {
		pw.Write([]byte("hello "))
		time.Sleep(10 * time.Millisecond)
		pw.Write([]byte("world"))
		req.Trailer.Set("Grpc-Status", "7")
		pw.Close()
	}()
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	if string(got) != "hello world" || res.Trailer.Get("Grpc-Status") != "7" {
		t.Fatalf("got %q, trailers %v", got, res.Trailer)
	}
}

// A small request goes out in one write: HEADERS and DATA with
// END_STREAM together.
func TestClientCoalesces(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	var writes atomic.Int64
	tr := newTestTransport(&writes, nil)
	send := func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(strings.Repeat("a", 1024)))
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	send() // the preface, SETTINGS and their ACK
	time.Sleep(50 * time.Millisecond)
	before := writes.Load()
	const n = 20
	for range n {
		send()
	}
	if got := writes.Load() - before; got != n {
		t.Fatalf("%d requests took %d writes", n, got)
	}
}

// Requests beyond the server's stream limit open another connection, and
// all complete; a concurrent burst on a cold pool shares one dial.
func TestClientStreamLimit(t *testing.T) {
	var active, peak atomic.Int64
	addr := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := active.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		active.Add(-1)
	}), 4)
	var dials atomic.Int64
	tr := newTestTransport(nil, &dials)
	// Warm: the first connection learns the limit.
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if res, err := tr.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else {
		res.Body.Close()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
			res, err := tr.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			res.Body.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if d := dials.Load(); d < 4 || d > 5 {
		t.Fatalf("%d dials for 16 requests 4 streams at a time", d)
	}
}

// Cold burst: 20 concurrent requests share one dial.
func TestClientOneDial(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	var dials atomic.Int64
	tr := newTestTransport(nil, &dials)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
			res, err := tr.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
		})
	}
	wg.Wait()
	if d := dials.Load(); d != 1 {
		t.Fatalf("%d dials", d)
	}
}

// A request the peer refuses comes back as REFUSED_STREAM when its body
// cannot be sent again, and is sent again when it can.
func TestClientRefused(t *testing.T) {
	// Answers 204 to each request, refusing the first refuse ones.
	var refuse atomic.Int64
	refuse.Store(1)
	addr := rawH2(t, func(fr *http2.Framer, f http2.Frame) {
		if f, ok := f.(*http2.HeadersFrame); ok {
			if refuse.Add(-1) >= 0 {
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
				return
			}
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: headerBlock(":status", "204"), EndStream: true, EndHeaders: true})
		}
	})
	tr := newTestTransport(nil, nil)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil || res.StatusCode != 204 {
		t.Fatalf("a held request refused once: %v %v", res, err)
	}
	refuse.Store(1)
	req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/", io.NopCloser(strings.NewReader("streamed")))
	_, err = tr.RoundTrip(req)
	var se http2.StreamError
	if !errors.As(err, &se) || se.Code != http2.ErrCodeRefusedStream {
		t.Fatalf("a streamed request refused: %v, want REFUSED_STREAM", err)
	}
}

// A client that stops reading a response leaves at most the stream
// window buffered; closing the body cancels the stream.
func TestClientBackPressure(t *testing.T) {
	var wrote atomic.Int64
	done := make(chan error, 1)
	addr := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 16<<10)
		for range 4096 { // 64 MiB
			n, err := w.Write(buf)
			wrote.Add(int64(n))
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}), 250)
	tr := newTestTransport(nil, nil)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	// The server's own buffers (its stream's, the socket's) add to the
	// window; 64 MiB would mean no back-pressure at all.
	if w := wrote.Load(); w > streamWindow+8<<20 {
		t.Fatalf("the server wrote %d bytes to a reader that read none", w)
	}
	res.Body.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the handler wrote all of it after the client closed the body")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler is still writing after the client closed the body")
	}
}

// GotConn says whether the connection was reused.
func TestClientGotConn(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	tr := newTestTransport(nil, nil)
	var reused []bool
	for range 2 {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	if len(reused) != 2 || reused[0] || !reused[1] {
		t.Fatalf("reused %v, want [false true]", reused)
	}
}

// A server that says Connection: close on every answer (a draining
// sidecar): GOAWAY after each, while other requests keep coming on the
// same connection. Those the GOAWAY did not cover go again on a new
// connection; a request refused more often than maxRetries fails with
// REFUSED_STREAM, which says it is safe to retry: never with an error that
// leaves it unknown whether the peer processed it (EOF, a reset).
func TestClientGoAwayStorm(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.Copy(w, r.Body)
	})}, nil)
	tr := newTestTransport(nil, nil)
	var wg sync.WaitGroup
	var refused, failed atomic.Int64
	const clients, each = 8, 200
	for range clients {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("ping"))
				res, err := tr.RoundTrip(req)
				var se http2.StreamError
				switch {
				case errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream:
					refused.Add(1)
					continue
				case err != nil:
					if failed.Add(1) < 5 {
						t.Error(err)
					}
					continue
				}
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || string(b) != "ping" {
					if failed.Add(1) < 5 {
						t.Errorf("body %q, %v", b, err)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed otherwise than refused", n, clients*each)
	}
	if n := refused.Load(); n > clients*each/100 {
		t.Errorf("%d of %d requests refused more than %d times", n, clients*each, maxRetries)
	}
}

// The response's Trailer map is its reader's until the body ends: the
// reader loop, which receives the trailers, does not write it. (A gRPC
// answer's trailers arrive with its headers; the router reads the map
// before the body: a write then crashed the sidecar with "concurrent map
// iteration and map write". Run with -race.)
func TestClientTrailersOwnedByReader(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
		_, _ = w.Write([]byte("answer"))
	}), 250)
	tr := newTestTransport(nil, nil)
	for range 200 {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("q"))
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Microsecond) // the trailers have arrived
		for k := range res.Trailer {
			t.Fatalf("trailer %s before the body's end", k)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("trailers %v after the body's end", res.Trailer)
		}
	}
}

// completeBody is a body of unknown length that says it has all arrived,
// as the body of a request pillion's Server received whole does.
type completeBody struct{ *strings.Reader }

func (b completeBody) Close() error          { return nil }
func (b completeBody) Complete() (int, bool) { return b.Len(), true }

// A body known complete goes with its headers, and its trailers, in one
// write, as a held body does: a gRPC unary call forwarded.
func TestClientHoldsCompleteBody(t *testing.T) {
	addr := h2cServer(t, http.HandlerFunc(echoBack), 250)
	var writes atomic.Int64
	tr := newTestTransport(&writes, nil)
	send := func() {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", nil)
		req.Body, req.ContentLength = completeBody{strings.NewReader("grpc message")}, -1
		req.Trailer = http.Header{"Grpc-Foo": {"bar"}}
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) != "grpc message" || res.Trailer.Get("Grpc-Foo") != "bar" {
			t.Fatalf("echoed %q, trailers %v", b, res.Trailer)
		}
	}
	send()
	time.Sleep(50 * time.Millisecond)
	before := writes.Load()
	const n = 20
	for range n {
		send()
	}
	if got := writes.Load() - before; got != n {
		t.Fatalf("%d requests took %d writes", n, got)
	}
}
