package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestHandshakesBounded: with room for two handshakes, five started at once
// run two at a time, the others wait in the queue (counted), and one whose
// time runs out while it waits gives up, counted, without a handshake.
func TestHandshakesBounded(t *testing.T) {
	h := newHandshakes(2)
	release := make(chan struct{})
	var mu sync.Mutex
	inServer, maxInServer := 0, 0
	// A server whose handshakes wait for release once they reach it.
	serverCfg := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		inServer++
		maxInServer = max(maxInServer, inServer)
		mu.Unlock()
		<-release
		mu.Lock()
		inServer--
		mu.Unlock()
		return nil, errors.New("refused, as the test wants")
	}}
	start := func(ctx context.Context) <-chan error {
		c, s := net.Pipe()
		go func() { _ = tls.Server(s, serverCfg).Handshake(); s.Close() }()
		done := make(chan error, 1)
		go func() {
			done <- h.do(ctx, tls.Client(c, &tls.Config{InsecureSkipVerify: true}), zap.NewNop())
			c.Close()
		}()
		return done
	}
	var dones []<-chan error
	for range 5 {
		dones = append(dones, start(context.Background()))
	}
	waitFor(t, "two in flight and three queued", func() bool { return h.active.Load() == 2 && h.queued.Load() == 3 })
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := <-start(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a handshake whose time ran out in the queue: %v, want the deadline", err)
	}
	if n := h.timeouts.Load(); n != 1 {
		t.Errorf("%d queue time-outs counted, want 1", n)
	}
	close(release)
	for _, d := range dones {
		if err := <-d; err == nil {
			t.Error("a handshake the server refused succeeded")
		}
	}
	if maxInServer != 2 || h.waited.Load() != 4 || h.active.Load() != 0 || h.queued.Load() != 0 {
		t.Errorf("at most %d handshakes reached the server (want 2); waited %d (want 4: three, and the one that gave up); active %d, queued %d after (want 0)",
			maxInServer, h.waited.Load(), h.active.Load(), h.queued.Load())
	}
}
