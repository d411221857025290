package h2

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// rawRespServer answers each request with HEADERS (fields), then DATA
// (body) with END_STREAM.
func rawRespServer(t *testing.T, fields []string, body []byte) string {
	return rawH2(t, func(fr *http2.Framer, f http2.Frame) {
		if f, ok := f.(*http2.HeadersFrame); ok {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: headerBlock(fields...), EndHeaders: true})
			_ = fr.WriteData(f.StreamID, true, body)
		}
	})
}

// A response whose DATA does not add up to its content-length ends its
// body with an error, and its stream goes: the reader does not wait
// forever, and the connection does not keep the stream (it counted
// against the server's limit and kept the connection from idling).
func TestClientContentLengthMismatch(t *testing.T) {
	t.Run("short", func(t *testing.T) { contentLengthMismatch(t, "10") })
	t.Run("long", func(t *testing.T) { contentLengthMismatch(t, "3") })
}

func contentLengthMismatch(t *testing.T, length string) {
	addr := rawRespServer(t, []string{":status", "200", "content-length", length}, []byte("hello"))
	tr := newTestTransport(nil, nil)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(res.Body); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("content-length %s, 5 bytes: the body read ended without an error", length)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("content-length %s, 5 bytes: the body read hangs", length)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, cc := range tr.conns[addr] {
		if n := cc.count(); n != 0 {
			t.Errorf("%d streams left open on the connection", n)
		}
	}
}

// Cancelling the request's context after the response headers aborts the
// body, as in net/http (a caller of a long poll or a server stream that
// leaves ends the upstream stream).
func TestClientCancelAfterHeaders(t *testing.T) {
	release := make(chan struct{})
	addr := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), 250)
	defer close(release)
	tr := newTestTransport(nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(res.Body); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the body ended cleanly after the request's context was cancelled")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the body read was not aborted by the request context's cancel")
	}
}
