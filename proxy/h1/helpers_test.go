package h1

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts on a loopback port and runs handle for each
// connection; the test's cleanup closes the listener and the connections
// and waits for the handlers. conns counts the connections accepted.
func rawServer(t *testing.T, handle func(net.Conn)) (addr string, conns *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int64)
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			mu.Lock()
			open[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String(), conns
}

// httpServer serves h on loopback; conns counts the connections.
func httpServer(t *testing.T, h http.HandlerFunc) (addr string, conns *atomic.Int64) {
	t.Helper()
	conns = new(atomic.Int64)
	s := httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String(), conns
}

func newTransport(t *testing.T) *Transport {
	tr := &Transport{ExpectContinueTimeout: 5 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func newRequest(t *testing.T, ctx context.Context, method, addr string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+"/p?q=1", body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// do sends req and returns its response's body, read whole.
func do(t *testing.T, tr *Transport, req *http.Request) (*http.Response, string) {
	t.Helper()
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return res, string(b)
}

// completeBody is a body that has all arrived, as proxy/h2's server's.
type completeBody struct{ *bytes.Reader }

func (b completeBody) Close() error          { return nil }
func (b completeBody) Complete() (int, bool) { return b.Len(), true }
func newCompleteBody(s string) completeBody  { return completeBody{bytes.NewReader([]byte(s))} }
func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Method", r.Method)
	_, _ = w.Write(append([]byte(r.URL.RequestURI()+" "), b...))
}

// readHead reads a request's head from c, up to its blank line.
func readHead(c net.Conn) (string, error) {
	var head []byte
	var b [1]byte
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(b[:]); err != nil {
			return string(head), err
		}
		head = append(head, b[0])
	}
	return string(head), nil
}

// noLeaks fails the test unless, once its other cleanups ran, the
// goroutines are back to the count they had when it was called. Call it
// first, so that its cleanup runs last.
func noLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines, %d before the test:\n%s", n, before, buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// stringsBody is a streaming body: not complete, no GetBody.
func stringsBody(s string) io.ReadCloser { return io.NopCloser(strings.NewReader(s)) }
