package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// zeros is an endless request body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// A server may answer while the request's body is still being sent, and
// read no more of it (413): the answer comes back, the body's writing
// stops, and the connection is not reused.
func TestEarlyAnswerWhileStreaming(t *testing.T) {
	noLeaks(t)
	addr, conns := rawServer(t, func(c net.Conn) {
		if _, err := readHead(c); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
		var b [1]byte
		_, _ = c.Read(b[:]) // until the client closes; the body is not read
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	})
	tr := newTransport(t)
	req := newRequest(t, context.Background(), "POST", addr, nil)
	req.Body = io.NopCloser(zeros{})
	req.ContentLength = -1
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, got := do(t, tr, req)
		if res.StatusCode != 413 || got != "big!" {
			t.Errorf("answer %d %q, want 413 big!", res.StatusCode, got)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("deadlock: the early answer did not come back")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	do(t, tr, newRequest(t, ctx, "GET", addr, nil))
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the one with a body half sent is not reused", n)
	}
}

// closesSecondRequest answers a connection's first request with
// keep-alive, then reads the next and hangs up without an answer: the
// server closing an idle connection as it is reused.
func closesSecondRequest(t *testing.T) (string, func() int64) {
	addr, conns := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		_, _ = http.ReadRequest(br)
	})
	return addr, conns.Load
}

// A request that met the server's close on a reused connection before any
// answer goes again on a new one when it can: its body can be had again
// and its method is idempotent (net/http's list: not PUT, not DELETE), or
// it was not sent at all.
func TestServerClosedReusedConnection(t *testing.T) {
	for _, tc := range []struct {
		name    string
		req     func(addr string) *http.Request
		retried bool
	}{
		{"GET", func(addr string) *http.Request {
			return newRequest(t, context.Background(), "GET", addr, nil)
		}, true},
		{"OPTIONS replayable", func(addr string) *http.Request {
			return newRequest(t, context.Background(), "OPTIONS", addr, strings.NewReader("again")) // GetBody set
		}, true},
		{"OPTIONS unreplayable", func(addr string) *http.Request {
			req := newRequest(t, context.Background(), "OPTIONS", addr, nil)
			req.Body, req.ContentLength = stringsBody("once"), 4
			return req
		}, false},
		{"POST replayable", func(addr string) *http.Request {
			return newRequest(t, context.Background(), "POST", addr, strings.NewReader("acted on?"))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			addr, conns := closesSecondRequest(t)
			tr := newTransport(t)
			do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
			res, err := tr.RoundTrip(tc.req(addr))
			if tc.retried {
				if err != nil {
					t.Fatalf("not retried: %v", err)
				}
				res.Body.Close()
				if n := conns(); n != 2 {
					t.Errorf("%d connections, want 2", n)
				}
				return
			}
			if err == nil {
				res.Body.Close()
				t.Fatal("sent again, on a new connection")
			}
			if !isConnFailure(err) {
				t.Errorf("error %v, want the connection's EOF or reset", err)
			}
		})
	}
}

// A request that cannot go again is not sent on an idle connection the
// server has closed: the socket is checked first (Linux).
func TestClosedIdleConnectionIsNotUsed(t *testing.T) {
	noLeaks(t)
	addr, conns := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}) // and closes
	tr := newTransport(t)
	do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
	time.Sleep(50 * time.Millisecond) // the server's FIN arrives
	req := newRequest(t, context.Background(), "POST", addr, nil)
	req.Body, req.ContentLength = newCompleteBody("once"), 4
	if _, got := do(t, tr, req); got != "ok" {
		t.Errorf("answer %q", got)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// An answer that is not HTTP is http.ReadResponse's error.
func TestMalformedResponse(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, err := readHead(c); err == nil {
			_, _ = io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n\r\n")
		}
	})
	_, err := newTransport(t).RoundTrip(newRequest(t, context.Background(), "GET", addr, nil))
	if err == nil || !strings.Contains(err.Error(), "malformed HTTP") {
		t.Fatalf("error %v, want one saying malformed HTTP", err)
	}
}

// Response heads are bounded, as net/http's Transport bounds them; the
// body is not.
func TestResponseHeadLimit(t *testing.T) {
	big := strings.Repeat("v", 64<<10)
	addr, _ := rawServer(t, func(c net.Conn) {
		for {
			head, err := readHead(c)
			if err != nil {
				return
			}
			if strings.Contains(head, "/big-head") {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+big+"\r\nContent-Length: 0\r\n\r\n")
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n"+big)
		}
	})
	tr := newTransport(t)
	tr.MaxResponseHeaderBytes = 16 << 10
	if _, got := do(t, tr, newRequest(t, context.Background(), "GET", addr, nil)); got != big {
		t.Errorf("a 64 KiB body under a 16 KiB head limit: %d bytes", len(got))
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/big-head", nil)
	if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Errorf("a 64 KiB head: %v, want the limit's error", err)
	}
}

// The context's end closes the connection: before the answer, RoundTrip
// returns its error at once; in the body, Read does.
func TestContextEnds(t *testing.T) {
	noLeaks(t)
	closed := make(chan struct{}, 2)
	addr, _ := rawServer(t, func(c net.Conn) {
		head, err := readHead(c)
		if err != nil {
			return
		}
		if strings.Contains(head, "/body") {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
		}
		var b [1]byte
		_, _ = c.Read(b[:])
		closed <- struct{}{}
	})
	tr := newTransport(t)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tr.RoundTrip(newRequest(t, ctx, "GET", addr, nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("before the answer: %v, want the context's error", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v", d)
	}
	<-closed

	ctx, cancel = context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/body", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := res.Body.Read(buf); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after the context's end: %v, want context.Canceled", err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Error("the connection was not closed")
	}
}

// Once every body is closed and the idle connections too, no goroutine of
// the transport's is left: the streamed body's writer, the context
// watchers, the waits for a 100 all end.
func TestNoGoroutinesLeft(t *testing.T) {
	noLeaks(t)
	addr, _ := httpServer(t, echoHandler)
	tr := newTransport(t)
	tr.IdleTimeout = time.Minute
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		do(t, tr, newRequest(t, ctx, "GET", addr, nil))
		req := newRequest(t, ctx, "POST", addr, stringsBody("streamed"))
		do(t, tr, req)
		req = newRequest(t, ctx, "POST", addr, strings.NewReader("expects"))
		req.Header.Set("Expect", "100-continue")
		do(t, tr, req)
		res, err := tr.RoundTrip(newRequest(t, ctx, "GET", addr, nil))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close() // unread
		cancel()
	}
}

// failingBody yields some bytes, then fails: a client gone mid-upload.
type failingBody struct{ sent bool }

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "part"), nil
	}
	return 0, errors.New("client went away")
}

func (b *failingBody) Close() error { return nil }

// A request body that fails while the server waits for the rest of it
// ends the request with the body's error, not a hang.
func TestRequestBodyFails(t *testing.T) {
	noLeaks(t)
	addr, _ := rawServer(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c) // never answers
	})
	tr := newTransport(t)
	req := newRequest(t, context.Background(), "POST", addr, nil)
	req.Body, req.ContentLength = &failingBody{}, 100
	done := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "client went away") {
			t.Errorf("error %v, want the body's", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("hung waiting for an answer to a request whose body failed")
	}
}
