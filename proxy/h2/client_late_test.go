package h2

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
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
	var pending []uint32 // the connection's goroutine's
	addr := rawH2(t, func(fr *http2.Framer, f http2.Frame) {
		switch f := f.(type) {
		case *http2.HeadersFrame:
			pending = append(pending, f.StreamID)
			if len(pending) == 41 { // answer all at once, late
				for _, id := range pending {
					_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headerBlock(":status", "200"), EndStream: true, EndHeaders: true})
				}
			}
		case *http2.GoAwayFrame:
			t.Errorf("the client sent GOAWAY %v", f.ErrCode)
		}
	})
	tr := newTestTransport(nil, nil)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			tr.RoundTrip(req)
		}()
	}
	wg.Wait()
	// One request that is not cancelled, in flight while the late answers arrive.
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("a live request failed after late answers to cancelled ones: %v", err)
	}
	res.Body.Close()
}
