package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawRespServer answers each request with HEADERS (fields), then DATA
// (body) with END_STREAM.
func rawRespServer(t *testing.T, fields []string, body []byte) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(c, preface); err != nil {
					return
				}
				fr := http2.NewFramer(c, c)
				fr.WriteSettings()
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.HeadersFrame:
						hb.Reset()
						for i := 0; i < len(fields); i += 2 {
							enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
						}
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
						fr.WriteData(f.StreamID, true, body)
					}
				}
			}()
		}
	}()
	return l.Addr().String()
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
