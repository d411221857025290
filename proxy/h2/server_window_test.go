package h2

import (
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// A client lowers SETTINGS_INITIAL_WINDOW_SIZE after DATA went: the
// stream's send window goes negative (RFC 9113 §6.9.2), and the handler
// then ends the response with an empty END_STREAM.
// The server then sends its END_STREAM (an empty DATA frame needs no
// window) rather than panic, which took the sidecar down.
func TestServerNegativeWindow(t *testing.T) {
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 100))
		w.(http.Flusher).Flush()
		<-release
	})}
	addr := serve(t, s, nil)
	rc := dialRaw(t, addr)
	rc.get(1, "/")
	for {
		f := rc.next()
		if f == nil {
			t.Fatal("EOF")
		}
		if _, ok := f.(*http2.DataFrame); ok {
			break
		}
	}
	rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	time.Sleep(100 * time.Millisecond)
	close(release)
	for {
		f, err := rc.read(2 * time.Second)
		if err != nil {
			t.Fatalf("no END_STREAM after the handler returned: %v", err)
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamEnded() {
			if len(d.Data()) != 0 {
				t.Fatalf("END_STREAM carried %d bytes through a window below zero", len(d.Data()))
			}
			return
		}
	}
}
