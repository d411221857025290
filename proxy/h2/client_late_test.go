package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// nopFlow takes a pipe's credits and drops.
type nopFlow struct{}

func (nopFlow) credit(int) {}
func (nopFlow) drop(int)   {}

// A reader that always lags the writer by a frame keeps a buffer of what
// is unread, not of everything that passed (64 MiB here).
func TestPipeBoundedByUnread(t *testing.T) {
	var p pipe
	p.init(nopFlow{})
	frame := make([]byte, 16<<10)
	out := make([]byte, 16<<10)
	p.write(frame)              // the reader starts one frame behind
	for i := 0; i < 4096; i++ { // 64 MiB through the pipe
		p.write(frame)
		io.ReadFull(&p, out)
	}
	if cap(p.buf) > 4*len(frame) {
		t.Errorf("pipe holds %d bytes of capacity for %d unread", cap(p.buf), len(p.buf)-p.off)
	}
}

// Answers that arrive after their requests were cancelled, more of them
// than the server side remembers resets of, are ignored: the connection
// and the request in flight on it carry on.
func TestClientLateAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var mu sync.Mutex
	var pending []uint32
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		preface := make([]byte, len(http2.ClientPreface))
		io.ReadFull(c, preface)
		fr := http2.NewFramer(c, c)
		fr.WriteSettings()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
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
				mu.Lock()
				pending = append(pending, f.StreamID)
				if len(pending) == 41 { // answer all at once, late
					for _, id := range pending {
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
					}
				}
				mu.Unlock()
			case *http2.GoAwayFrame:
				t.Errorf("the client sent GOAWAY %v", f.ErrCode)
			}
		}
	}()
	tr := newTestTransport(nil, nil)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.Addr().String()+"/", nil)
			tr.RoundTrip(req)
		}()
	}
	wg.Wait()
	// One request that is not cancelled, in flight while the late answers arrive.
	req, _ := http.NewRequest(http.MethodGet, "http://"+l.Addr().String()+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("a live request failed after late answers to cancelled ones: %v", err)
	}
	res.Body.Close()
}
