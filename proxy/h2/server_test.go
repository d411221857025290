package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
)

// TestServerRequest checks the request a handler gets, as net/http's
// HTTP/2 server builds it.
func TestServerRequest(t *testing.T) {
	type seen struct {
		Method, Host, Proto, RequestURI, Path, Query string
		ProtoMajor                                   int
		ContentLength                                int64
		NoBody, HasRemote                            bool
		Header                                       http.Header
	}
	got := make(chan seen, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Del("Accept-Encoding")
		h.Del("User-Agent")
		got <- seen{r.Method, r.Host, r.Proto, r.RequestURI, r.URL.Path, r.URL.RawQuery, r.ProtoMajor,
			r.ContentLength, r.Body == http.NoBody, r.RemoteAddr != "", h}
		w.Header().Set("X-Answer", "42")
		_, _ = io.WriteString(w, "hello")
	})}
	addr := serve(t, s, nil)
	req, _ := http.NewRequest("GET", "http://"+addr+"/a/b?c=d", nil)
	req.Header.Add("X-Multi", "1")
	req.Header.Add("X-Multi", "2")
	req.Header.Add("Cookie", "a=1")
	req.Header.Add("Cookie", "b=2")
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	want := seen{"GET", addr, "HTTP/2.0", "/a/b?c=d", "/a/b", "c=d", 2, 0, true, true,
		http.Header{"X-Multi": {"1", "2"}, "Cookie": {"a=1; b=2"}}}
	if diff := cmp.Diff(want, <-got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || string(body) != "hello" || resp.Header.Get("X-Answer") != "42" {
		t.Errorf("response %s %d %q %v", resp.Proto, resp.StatusCode, body, resp.Header)
	}
	if resp.ContentLength != 5 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || resp.Header.Get("Date") == "" {
		t.Errorf("content-length %d, content-type %q, date %q: want net/http's", resp.ContentLength,
			resp.Header.Get("Content-Type"), resp.Header.Get("Date"))
	}
}

// TestServerEcho posts bodies larger than the windows: flow control, both
// ways, must move them whole.
func TestServerEcho(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength < 0 {
			t.Error("no ContentLength")
		}
		_, _ = io.Copy(w, r.Body)
	})}
	client := h2cClient(t)
	addr := serve(t, s, nil)
	for _, tc := range []struct {
		name string
		size int
	}{{"1MiB", 1 << 20}, {"32MiB", 32 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			body := make([]byte, tc.size)
			_, _ = rand.Read(body)
			resp, err := client.Post("http://"+addr+"/echo", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, body) {
				t.Errorf("echoed %d bytes, not the %d sent", len(got), len(body))
			}
		})
	}
}

// TestServerTrailers sends trailers both ways, gRPC style: the request's
// announced, the response's both announced and with http.TrailerPrefix.
func TestServerTrailers(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Trailer["X-Checksum"]; !ok {
			t.Errorf("request Trailer %v before the body: want X-Checksum announced", r.Trailer)
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"Grpc-Message", "fine")
		w.Header().Set(http.TrailerPrefix+"X-Got", r.Trailer.Get("X-Checksum"))
	})}
	addr := serve(t, s, nil)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/svc/Method", pr)
	req.Trailer = http.Header{"X-Checksum": nil}
	go func() {
		_, _ = pw.Write([]byte("message"))
		req.Trailer.Set("X-Checksum", "abc")
		_ = pw.Close()
	}()
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || string(body) != "message" {
		t.Fatalf("body %q, %v", body, err)
	}
	want := http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {"fine"}, "X-Got": {"abc"}}
	if diff := cmp.Diff(want, resp.Trailer); diff != "" {
		t.Errorf("response trailers (-want +got):\n%s", diff)
	}
}

// TestServerContinue: a client that expects 100-continue gets it when the
// handler reads the body, and not when the handler answers without.
func TestServerContinue(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Expect") != "" {
			t.Error("Expect reached the handler")
		}
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusExpectationFailed)
			return
		}
		_, _ = io.Copy(w, r.Body)
	})}
	addr := serve(t, s, nil)
	client := h2cClient(t)
	for _, tc := range []struct {
		path      string
		status    int
		continued bool
	}{{"/read", 200, true}, {"/refuse", 417, false}} {
		t.Run(tc.path, func(t *testing.T) {
			var continued bool
			trace := &httptrace.ClientTrace{Got100Continue: func() { continued = true }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				"PUT", "http://"+addr+tc.path, strings.NewReader("body"))
			req.Header.Set("Expect", "100-continue")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tc.status || continued != tc.continued {
				t.Errorf("status %d, 100 Continue %v; want %d, %v", resp.StatusCode, continued, tc.status, tc.continued)
			}
		})
	}
}

// TestServerEarlyHints: 1xx responses reach the client, with the header
// as it was, before the final one.
func TestServerEarlyHints(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Link", "</script.js>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusCreated)
		w.WriteHeader(http.StatusTeapot) // ignored
	})}
	addr := serve(t, s, nil)
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+addr+"/", nil)
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	want := []string{"</style.css>; rel=preload", "</script.js>; rel=preload"}
	if resp.StatusCode != http.StatusCreated || !cmp.Equal(hints, want) {
		t.Errorf("status %d, 103s %q; want 201, %q", resp.StatusCode, hints, want)
	}
}

// TestServerPanic: a handler panicking resets its stream; ErrAbortHandler
// quietly, another panic logged with its stack.
func TestServerPanic(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	s := &Server{Logger: zap.New(core), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler)
		}
		panic("boom")
	})}
	addr := serve(t, s, nil)
	client := h2cClient(t)
	for _, tc := range []struct {
		path   string
		logged int
	}{{"/abort", 0}, {"/boom", 1}} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := client.Get("http://" + addr + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") {
				t.Errorf("reading the body: %v, want the stream reset with INTERNAL_ERROR", err)
			}
			if n := logs.FilterMessage("h2: handler panic").Len(); n != tc.logged {
				t.Errorf("%d panics logged, want %d", n, tc.logged)
			}
		})
	}
	if e := logs.All(); len(e) > 0 && !strings.Contains(e[0].ContextMap()["stack"].(string), "TestServerPanic") {
		t.Errorf("the panic's log has no stack: %v", e[0].ContextMap())
	}
}

// TestServerContext: a request's context carries the connection's values
// and ends when the client resets the stream.
func TestServerContext(t *testing.T) {
	type key struct{}
	ended := make(chan error, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(key{}) != "conn" {
			t.Error("the request's context does not derive from ServeConn's")
		}
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		ended <- r.Context().Err()
	})}
	addr2 := serveCtx(t, s, context.WithValue(context.Background(), key{}, "conn"), nil)
	rctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(rctx, "GET", "http://"+addr2+"/", nil)
	resp, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	_ = resp.Body.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("context ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context outlived the stream's reset")
	}
}

// TestServerHopByHop: connection-specific fields a handler sets are not
// sent (RFC 9113 §8.2.2), nor those its Connection field names.
func TestServerHopByHop(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Private")
		h.Set("X-Private", "secret")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Transfer-Encoding", "chunked")
		h.Set("Upgrade", "websocket")
		h.Set("X-Kept", "yes")
	})}
	addr := serve(t, s, nil)
	resp, err := h2cClient(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	for _, k := range []string{"Connection", "X-Private", "Keep-Alive", "Transfer-Encoding", "Upgrade"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("%s: %q was sent", k, v)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" {
		t.Error("X-Kept was dropped")
	}
}

// TestServerContentLength: a content-length the handler sets is sent and
// holds it to it: no more is written, and less resets the stream.
func TestServerContentLength(t *testing.T) {
	var mu sync.Mutex
	var writeErr error
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4")
		if r.URL.Path == "/short" {
			_, _ = io.WriteString(w, "ab")
			return
		}
		_, err := io.WriteString(w, "abcdef")
		mu.Lock()
		writeErr = err
		mu.Unlock()
		_, _ = io.WriteString(w, "abcd")
	})}
	addr := serve(t, s, nil)
	client := h2cClient(t)
	resp, err := client.Get("http://" + addr + "/long")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	mu.Lock()
	if resp.ContentLength != 4 || string(body) != "abcd" || !errors.Is(writeErr, http.ErrContentLength) {
		t.Errorf("content-length %d, body %q, the long write's error %v", resp.ContentLength, body, writeErr)
	}
	mu.Unlock()
	resp, err = client.Get("http://" + addr + "/short")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	var se http2.StreamError
	if err == nil || !strings.Contains(err.Error(), "INTERNAL_ERROR") && !errors.As(err, &se) {
		t.Errorf("a body short of its content-length: %v, want the stream reset", err)
	}
}
