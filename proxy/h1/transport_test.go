package h1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Sequential requests of every kind (no body, a complete body written by
// the caller, a streamed body written by a goroutine) share one
// connection, and each gets its own answer.
func TestKeepAliveReusesOneConnection(t *testing.T) {
	noLeaks(t)
	addr, conns := httpServer(t, echoHandler)
	tr := newTransport(t)
	for i := range 4 {
		for _, tc := range []struct {
			method string
			body   func() any
			want   string
		}{
			{"GET", nil, "/p?q=1 "},
			{"POST", func() any { return newCompleteBody("held") }, "/p?q=1 held"},
			{"PUT", func() any { return stringsBody("streamed") }, "/p?q=1 streamed"},
		} {
			req := newRequest(t, context.Background(), tc.method, addr, nil)
			if tc.body != nil {
				b := tc.body().(interface {
					Read([]byte) (int, error)
					Close() error
				})
				req.Body = b
				req.ContentLength = -1
			}
			res, got := do(t, tr, req)
			if got != tc.want || res.Header.Get("X-Method") != tc.method {
				t.Fatalf("round %d %s: %q (%s), want %q", i, tc.method, got, res.Header.Get("X-Method"), tc.want)
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 12 sequential requests, want 1", n)
	}
}

// An idle connection closes after IdleTimeout; the next request dials.
func TestIdleTimeoutCloses(t *testing.T) {
	noLeaks(t)
	closed := make(chan struct{}, 4)
	addr, conns := rawServer(t, func(c net.Conn) {
		for {
			if _, err := readHead(c); err != nil {
				closed <- struct{}{}
				return
			}
			_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
		}
	})
	tr := newTransport(t)
	tr.IdleTimeout = 50 * time.Millisecond
	start := time.Now()
	do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
	select {
	case <-closed:
		if d := time.Since(start); d < 50*time.Millisecond {
			t.Errorf("closed after %v, before the idle time-out", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	// The connection is counted out just after its close.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		tr.mu.Lock()
		hosts := len(tr.hosts)
		tr.mu.Unlock()
		if hosts == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d hosts kept with no connection", hosts)
		}
	}
	do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// A connection going idle arms its timer; CloseIdleConnections stops it.
func TestCloseIdleStopsTimers(t *testing.T) {
	addr, _ := httpServer(t, echoHandler)
	tr := newTransport(t)
	tr.IdleTimeout = time.Hour
	do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
	tr.mu.Lock()
	c := tr.hosts[addr].idle[0]
	tr.mu.Unlock()
	tr.CloseIdleConnections()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if c.timer.Stop() {
		t.Error("the idle timer of a closed connection was still running")
	}
	if len(tr.hosts) != 0 {
		t.Errorf("%d hosts kept after CloseIdleConnections", len(tr.hosts))
	}
}

// Beyond MaxConnsPerHost a request waits for a connection: until its
// context ends, or one is free.
func TestMaxConnsPerHostWaits(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	var busy atomic.Bool
	addr, conns := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("block") != "" {
			busy.Store(true)
			<-release
		}
		_, _ = w.Write([]byte("ok"))
	})
	tr := newTransport(t)
	tr.MaxConnsPerHost = 1
	first := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/?block=1", nil)
		res, err := tr.RoundTrip(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		first <- err
	}()
	for !busy.Load() {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tr.RoundTrip(newRequest(t, ctx, "GET", addr, nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request beyond the cap: %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the context's end took %v to be noticed", d)
	}
	third := make(chan error, 1)
	go func() {
		res, err := tr.RoundTrip(newRequest(t, context.Background(), "GET", addr, nil))
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		third <- err
	}()
	select {
	case err := <-third:
		t.Fatalf("a request beyond the cap did not wait: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-third; err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

type dialFailure struct{}

func (dialFailure) Error() string { return "no route" }

// The dial's error comes back wrapped, itself.
func TestDialErrorIsWrapped(t *testing.T) {
	tr := newTransport(t)
	tr.Dial = func(context.Context, string) (net.Conn, error) { return nil, &dialFailure{} }
	_, err := tr.RoundTrip(newRequest(t, context.Background(), "POST", "10.0.0.7:8080", strings.NewReader("x")))
	var df *dialFailure
	if !errors.As(err, &df) {
		t.Fatalf("error %v (%T), want one wrapping the dial's", err, err)
	}
	if want := "h1: dial 10.0.0.7:8080: no route"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// GotConn tells the router a request has its connection, and whether it
// was reused (its latency is measured from there).
func TestTraceGotConn(t *testing.T) {
	addr, _ := httpServer(t, echoHandler)
	tr := newTransport(t)
	var got []bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { got = append(got, info.Reused) },
	})
	for range 2 {
		do(t, tr, newRequest(t, ctx, "GET", addr, nil))
	}
	if fmt.Sprint(got) != "[false true]" {
		t.Errorf("GotConn saw reused %v, want [false true]", got)
	}
}
