package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// An "Expect: 100-continue" request the server answers at once, with a
// body, without a 100 (401, 413, 417 with an error page): the body is not
// sent, and the answer's body arrives whole (the writer's goroutine once
// took the refusal, which (*http.Request).Write wraps, for a failed body
// and closed the connection under it).
func TestExpectContinueRefusedKeepsResponseBody(t *testing.T) {
	page := strings.Repeat("x", 256<<10)
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, err := readHead(c); err != nil {
			return
		}
		_, _ = io.WriteString(c, fmt.Sprintf("HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\n\r\n", len(page)))
		time.Sleep(50 * time.Millisecond) // the head alone first
		_, _ = io.WriteString(c, page)
		_, _ = io.Copy(io.Discard, c)
	})
	tr := newTransport(t)
	req := newRequest(t, context.Background(), "PUT", addr, stringsBody("payload"))
	req.ContentLength = 7
	req.Header.Set("Expect", "100-continue")
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || len(b) != len(page) {
		t.Fatalf("read %d of %d bytes of the 413's body: %v", len(b), len(page), err)
	}
}

// The application closed its idle keep-alive connections (its keep-alive
// time-out is shorter than the pool's, or it restarted): a GET finds two
// dead connections in the pool and must still succeed, as with net/http's
// Transport, which noticed each close while the connection was idle.
func TestGetAfterServerClosedTwoIdleConns(t *testing.T) {
	t.Run("h1", func(t *testing.T) { getAfterServerClosedTwoIdleConns(t, newTransport(t)) })
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		getAfterServerClosedTwoIdleConns(t, tr)
	})
}

func getAfterServerClosedTwoIdleConns(t *testing.T, tr http.RoundTripper) {
	release := make(chan struct{})
	addr, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		<-release // both requests are in flight at once: two connections
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(20 * time.Millisecond) // then the keep-alive time-out
	}) // and closes
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := tr.RoundTrip(newRequest(t, context.Background(), "GET", addr, nil))
			if err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	time.Sleep(100 * time.Millisecond) // both FINs arrived
	res, err := tr.RoundTrip(newRequest(t, context.Background(), "GET", addr, nil))
	if err != nil {
		t.Fatalf("GET after the server closed its idle connections: %v", err)
	}
	res.Body.Close()
}

// A server that says 408 on a keep-alive connection it times out (net/http's
// Transport discards it: is408Message, golang/go#32310): the stale 408
// must not be read as the next GET's answer.
func TestStale408OnIdleConn(t *testing.T) {
	t.Run("h1", func(t *testing.T) { stale408(t, newTransport(t)) })
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		stale408(t, tr)
	})
}

func stale408(t *testing.T, tr http.RoundTripper) {
	addr, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(20 * time.Millisecond) // the keep-alive time-out
		_, _ = io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	}) // and closes
	for i := range 2 {
		res, err := tr.RoundTrip(newRequest(t, context.Background(), "GET", addr, nil))
		if err != nil {
			t.Fatalf("GET %d: %v", i+1, err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET %d: status %d, the 408 the server sent the idle connection", i+1, res.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
