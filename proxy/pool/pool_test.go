package pool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// backend serves HTTP/1.1 and h2c; handler may be nil (200 "ok").
func backend(t *testing.T, idle time.Duration, handler http.HandlerFunc) (addr string, conns *atomic.Int64) {
	t.Helper()
	if handler == nil {
		handler = func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }
	}
	srv := httptest.NewUnstartedServer(handler)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Config.IdleTimeout = idle
	conns = &atomic.Int64{}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), conns
}

func get(t *testing.T, p *Pools, addr string, proto upstream.Protocol) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	res, err := p.RoundTrip(req, endpoint(req), proto)
	if err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	return res, err
}

func TestHTTP2MultiplexesOnOneConnection(t *testing.T) {
	release := make(chan struct{})
	addr, conns := backend(t, 0, func(w http.ResponseWriter, r *http.Request) {
		<-release
		fmt.Fprint(w, r.Proto)
	})
	p := New(Config{DialTimeout: time.Second})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			res, err := get(t, p, addr, upstream.HTTP2)
			if err == nil && res.ProtoMajor != 2 {
				err = fmt.Errorf("proto %s", res.Proto)
			}
			errs <- err
		})
	}
	// All 20 are in flight at once before any is answered.
	deadline := time.Now().Add(5 * time.Second)
	for len(p.Conns()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections for 20 concurrent requests, want 1", n)
	}
	if got := p.Conns(); len(got) != 1 || got[0].Open != 1 || got[0].Protocol != upstream.HTTP2 || got[0].Endpoint != addr {
		t.Errorf("Conns() = %+v, want one HTTP/2 connection to %s", got, addr)
	}
}

func TestHTTP1KeepAliveReusesAndIdleCloses(t *testing.T) {
	addr, conns := backend(t, 0, nil)
	p := New(Config{DialTimeout: time.Second, HTTP1IdleTimeout: 100 * time.Millisecond})
	for range 3 {
		if _, err := get(t, p, addr, upstream.HTTP1); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 sequential requests used %d connections, want 1 kept alive", n)
	}
	open := func() int {
		n := 0
		for _, e := range p.Conns() {
			n += e.Open
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for open() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The endpoint's counts stay, like Envoy's host stats.
	if got := p.Conns(); len(got) != 1 || got[0].Open != 0 || got[0].Total != 1 || got[0].TotalRequests != 3 || got[0].ActiveRequests != 0 {
		t.Errorf("after the idle time-out Conns() = %+v, want one endpoint: 0 open, 1 ever, 3 requests, none active", got)
	}
}

// closesSecondRequest answers the first request of each connection with
// keep-alive, then closes the connection on the next without answering:
// the application closing an idle connection just as the pool reuses it.
func closesSecondRequest(t *testing.T) (addr string, conns *atomic.Int64) {
	t.Helper()
	conns = &atomic.Int64{}
	addr = tcpServer(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		_, _ = http.ReadRequest(br) // and hang up
	})
	return addr, conns
}

// tcpServer runs handle for each connection to a loopback port until the
// test ends, and returns the address.
func tcpServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, l, handle)
	return l.Addr().String()
}

// TestStaleIdleConnectionIsRetried is the classic "503 UC" race: the
// application closes a keep-alive connection as the pool reuses it. A GET
// is retried on a new connection; a POST, which the application may have
// acted on, is not.
func TestStaleIdleConnectionIsRetried(t *testing.T) {
	addr, conns := closesSecondRequest(t)
	p := New(Config{DialTimeout: time.Second})
	for i := range 3 {
		if _, err := get(t, p, addr, upstream.HTTP1); err != nil {
			t.Fatalf("GET %d on a connection the app closed: %v", i, err)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("backend saw %d connections, want 3 (every reuse met a close, and was retried on a new one)", n)
	}
	post := func() error {
		req, _ := http.NewRequest("POST", "http://"+addr+"/", strings.NewReader("x"))
		res, err := p.RoundTrip(req, endpoint(req), upstream.HTTP1)
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		return err
	}
	p.CloseIdle()
	if err := post(); err != nil {
		t.Fatalf("first POST: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // the connection goes back to the pool after the body
	var pe *upstream.Error
	if err := post(); !errors.As(err, &pe) || pe.Kind != upstream.Reset {
		t.Errorf("POST on a connection the app closed: %v, want a upstream.Reset *upstream.Error (not retried)", err)
	}
}

func TestMaxConnsPerEndpoint(t *testing.T) {
	var inFlight, peak atomic.Int64
	addr, _ := backend(t, 0, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		inFlight.Add(-1)
	})
	p := New(Config{DialTimeout: time.Second, MaxConnsPerEndpoint: 2})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := get(t, p, addr, upstream.HTTP1); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := peak.Load(); n != 2 {
		t.Errorf("peak concurrent requests at the backend = %d, want 2 (the limit)", n)
	}
}

func TestErrorsAreTyped(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	garbage := tcpServer(t, func(c net.Conn) {
		_, _ = c.Read(make([]byte, 4096))
		_, _ = io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n")
	})
	hangup := tcpServer(t, func(c net.Conn) {
		_, _ = c.Read(make([]byte, 4096))
	})
	answer := func(resp string) string {
		return tcpServer(t, func(c net.Conn) {
			_, _ = c.Read(make([]byte, 4096))
			_, _ = io.WriteString(c, resp)
		})
	}

	p := New(Config{DialTimeout: time.Second})
	for _, tc := range []struct {
		name  string
		addr  string
		proto upstream.Protocol
		kind  upstream.Kind
	}{
		{"refused", dead, upstream.HTTP1, upstream.ConnectFailure},
		{"refused h2", dead, upstream.HTTP2, upstream.ConnectFailure},
		{"not HTTP", garbage, upstream.HTTP1, upstream.ProtocolError},
		{"closed before answering", hangup, upstream.HTTP1, upstream.Reset},
		{"bad header line", answer("HTTP/1.1 200 OK\r\nno colon\r\n\r\n"), upstream.HTTP1, upstream.ProtocolError},
		{"bad length", answer("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), upstream.HTTP1, upstream.ProtocolError},
		{"cut off in the head", answer("HTTP/1.1 200 OK\r\nA: b\r\n"), upstream.HTTP1, upstream.Reset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+tc.addr+"/", nil) // POST: not retried
			_, err := p.RoundTrip(req, endpoint(req), tc.proto)
			var pe *upstream.Error
			if !errors.As(err, &pe) || pe.Kind != tc.kind || pe.Endpoint != tc.addr || pe.Protocol != tc.proto {
				t.Fatalf("error = %#v, want a %v *upstream.Error for %s", err, tc.kind, tc.addr)
			}
			if tc.kind == upstream.ConnectFailure && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("error %v does not wrap ECONNREFUSED", err)
			}
		})
	}
}

func TestContextErrorIsReturnedAsIs(t *testing.T) {
	addr, _ := backend(t, 0, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	p := New(Config{DialTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	_, err := p.RoundTrip(req, endpoint(req), upstream.HTTP2)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error = %v, want context.DeadlineExceeded", err)
	}
}

// refusingH2 is an HTTP/2 server that refuses every stream.
func refusingH2(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c net.Conn) {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.HeadersFrame:
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			}
		}
	})
}

func TestRefusedStreamWithABodyIsRefused(t *testing.T) {
	addr := refusingH2(t)
	p := New(Config{DialTimeout: time.Second})
	req, _ := http.NewRequest("POST", "http://"+addr+"/", io.NopCloser(strings.NewReader("streamed")))
	_, err := p.RoundTrip(req, endpoint(req), upstream.HTTP2)
	var pe *upstream.Error
	if !errors.As(err, &pe) || pe.Kind != upstream.Refused {
		t.Fatalf("error = %v, want a upstream.Refused *upstream.Error: the peer processed nothing, a retry is safe", err)
	}
	if req.GetBody != nil {
		t.Errorf("RoundTrip changed the caller's request")
	}
}

// TestStreamedRequestBodyArrivesWhole: a request body that is not in
// memory (the proxy's case: the downstream's body) reaches the upstream
// byte for byte, in both pools, larger than a copy buffer; the request is
// no longer active once its response body is read.
func TestStreamedRequestBodyArrivesWhole(t *testing.T) {
	addr, _ := backend(t, 0, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	body := make([]byte, 3*bufpool.Size+17)
	for i := range body {
		body[i] = byte(i * 7)
	}
	want := fmt.Sprintf("%d %x", len(body), sha256.Sum256(body))
	p := New(Config{DialTimeout: time.Second})
	for _, proto := range []upstream.Protocol{upstream.HTTP1, upstream.HTTP2} {
		t.Run(proto.String(), func(t *testing.T) {
			for _, size := range []int64{int64(len(body)), -1} { // Content-Length, then chunked
				// Not a reader net/http knows to be in memory: streamed.
				streamed := struct{ io.Reader }{bytes.NewReader(body)}
				req, _ := http.NewRequest("POST", "http://"+addr+"/", io.NopCloser(streamed))
				req.ContentLength = size
				res, err := p.RoundTrip(req, endpoint(req), proto)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || string(got) != want {
					t.Errorf("length %d: upstream got %q, %v; want %q", size, got, err, want)
				}
			}
		})
	}
	for _, e := range p.Conns() {
		if e.TotalRequests != 2 || e.ActiveRequests != 0 {
			t.Errorf("Conns() = %+v, want 2 requests per pool, none active", e)
		}
	}
}

// endpoint is the plain (unmeshed) Endpoint of req's URL.
func endpoint(req *http.Request) upstream.Endpoint {
	return upstream.Endpoint{Addr: netip.MustParseAddrPort(req.URL.Host)}
}
