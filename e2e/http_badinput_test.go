package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// rawDial connects from pod as an application, with a deadline.
func rawDial(t *testing.T, pod *testpod.Pod, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// rawRequest sends request on a new connection from pod to addr and
// returns the response; the write runs beside the read, so that a server
// that answers before reading everything does not block it.
func rawRequest(t *testing.T, pod *testpod.Pod, addr, request string) (*http.Response, net.Conn) {
	t.Helper()
	c := rawDial(t, pod, addr)
	go func() { _, _ = io.WriteString(c, request) }()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %.40q…: %v", request, err)
	}
	res.Body.Close()
	return res, c
}

// handledAsHTTP checks that a's sidecar served the connection from c as
// HTTP itself, by its log line for c's source address.
func handledAsHTTP(t *testing.T, a *meshtest.Sidecar, c net.Conn, protocol string) {
	t.Helper()
	src := c.LocalAddr().String()
	l, ok := a.WaitLog(func(l meshtest.LogLine) bool {
		return l.Msg == "connection" && l.Direction == "outbound" && l.Src == src
	}, 5*time.Second)
	if !ok {
		t.Errorf("a's sidecar logged no connection from %s", src)
	} else if l.Protocol != protocol {
		t.Errorf("a's sidecar took the connection from %s for %q, want %q", src, l.Protocol, protocol)
	}
}

// echoWorks checks that a plain request through the sidecars still works.
func echoWorks(t *testing.T, m *httpMesh) {
	t.Helper()
	var saw appSaw
	if err := json.Unmarshal([]byte(curl(t, m.a.Pod, "http://"+m.bAddr+"/echo")), &saw); err != nil || saw.URI != "/echo" {
		t.Errorf("a good request after the bad one: %+v, %v", saw, err)
	}
}

func TestHTTPBadInput(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	// Warm both pools, then note the sidecars' open files.
	curl(t, m.a.Pod, "--http1.1", "http://"+m.bAddr+"/echo")
	curl(t, m.a.Pod, "--http2-prior-knowledge", "http://"+m.bAddr+"/echo")
	pids := map[*meshtest.Sidecar]int{}
	fds := map[*meshtest.Sidecar]int{}
	for _, sc := range []*meshtest.Sidecar{m.a, m.b} {
		pid, err := sc.ProxyPID()
		if err != nil {
			t.Fatal(err)
		}
		n, err := meshtest.OpenFDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		pids[sc], fds[sc] = pid, n
	}

	t.Run("100 KiB of headers: 431, then the next request works", func(t *testing.T) {
		var req strings.Builder
		req.WriteString("GET /echo HTTP/1.1\r\nHost: b.shop\r\n")
		for i := range 100 {
			fmt.Fprintf(&req, "X-Big-%02d: %s\r\n", i, strings.Repeat("v", 1010))
		}
		req.WriteString("\r\n")
		// The app would take it (net/http allows 1 MiB): the 431 is a's.
		res, c := rawRequest(t, m.a.Pod, m.bAddr, req.String())
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %s, want 431", res.Status)
		}
		c.Close()
		handledAsHTTP(t, m.a, c, "http/1")
		echoWorks(t, m)
	})

	t.Run("malformed request line: 400, then the next request works", func(t *testing.T) {
		// A request line the sniffer takes for HTTP/1.1, whose target does
		// not parse.
		res, c := rawRequest(t, m.a.Pod, m.bAddr, "GET /a%zz HTTP/1.1\r\nHost: b.shop\r\n\r\n")
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("status %s, want 400", res.Status)
		}
		c.Close()
		handledAsHTTP(t, m.a, c, "http/1")
		echoWorks(t, m)
	})

	t.Run("garbage after the h2c preface: that connection closed, others served", func(t *testing.T) {
		stop := keepAsking(t, m)
		garbageAfterPreface(t, m, 10)
		time.Sleep(50 * time.Millisecond) // a request or two after the last bad client
		served, failures := stop()
		for i, p := range clientProtocols {
			t.Logf("good %s client: %d requests served while the bad ones came and went", p.name, served[i])
			if len(failures[i]) > 0 || served[i] == 0 {
				t.Errorf("good %s client beside the bad ones: %d requests served, errors %v", p.name, served[i], failures[i])
			}
		}
	})

	// Every connection above is closed: the sidecars' open files come back
	// to where they were (a few may differ: pooled connections come and go).
	for _, sc := range []*meshtest.Sidecar{m.a, m.b} {
		const slack = 3
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, err := meshtest.OpenFDs(pids[sc])
			if err != nil {
				t.Fatal(err)
			}
			if n <= fds[sc]+slack {
				t.Logf("%s's sidecar: %d files open before the bad clients, %d after", sc.Pod.Name, fds[sc], n)
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s's sidecar has %d files open, %d before the bad clients: it leaks connections", sc.Pod.Name, n, fds[sc])
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// keepAsking starts one good client per protocol in clientProtocols, each
// asking for /echo every 5 ms (for 30 s at most), and returns once each was
// served. stop stops them and returns how many requests each had served
// since, and what failed.
func keepAsking(t *testing.T, m *httpMesh) (stop func() (served []int64, failures [][]error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	var wg sync.WaitGroup
	counts := make([]atomic.Int64, len(clientProtocols))
	failures := make([][]error, len(clientProtocols))
	for i, p := range clientProtocols {
		pc := newPodClient(t, m.a.Pod, p.h2c)
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.bAddr+"/echo", nil)
				res, err := pc.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if err == nil && res.StatusCode != 200 {
						err = fmt.Errorf("status %s", res.Status)
					}
				}
				switch {
				case err == nil:
					counts[i].Add(1)
				case ctx.Err() == nil:
					failures[i] = append(failures[i], err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	before := make([]int64, len(counts))
	for i := range counts {
		for counts[i].Load() == 0 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		before[i] = counts[i].Load()
	}
	return func() ([]int64, [][]error) {
		cancel()
		wg.Wait()
		served := make([]int64, len(counts))
		for i := range counts {
			served[i] = counts[i].Load() - before[i]
		}
		return served, failures
	}
}

// garbageAfterPreface opens n connections from pod a to b, all at once, and
// sends each the h2c preface and then bytes that are no HTTP/2 frame. a's
// sidecar must take each for h2c, answer GOAWAY with an error, and close
// it.
func garbageAfterPreface(t *testing.T, m *httpMesh, n int) {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = rawDial(t, m.a.Pod, m.bAddr)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, http2.ClientPreface+"GARBAGE, NOT A SETTINGS FRAME\r\n\r\n"); err != nil {
				t.Errorf("bad client %d: %v", i, err)
				return
			}
			// The sidecar's SETTINGS, then a GOAWAY, then the end.
			fr := http2.NewFramer(io.Discard, c)
			var goAway *http2.GoAwayFrame
			var err error
			for {
				var f http2.Frame
				if f, err = fr.ReadFrame(); err != nil {
					break
				}
				if ga, ok := f.(*http2.GoAwayFrame); ok {
					goAway = ga
				}
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("bad client %d: the sidecar kept the connection open for 5 s", i)
			}
			if goAway == nil || goAway.ErrCode == http2.ErrCodeNo {
				t.Errorf("bad client %d: connection ended (%v) after GOAWAY %v, want one with an error code", i, err, goAway)
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
		handledAsHTTP(t, m.a, c, "h2c")
	}
}
