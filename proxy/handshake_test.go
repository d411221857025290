package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
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
			defer c.Close()
			release, err := h.acquire(ctx, zap.NewNop())
			if err != nil {
				done <- err
				return
			}
			defer release()
			done <- handshake(ctx, tls.Client(c, &tls.Config{InsecureSkipVerify: true}))
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

// TestHandshakeQueueBeforeConnect: connections that wait for a handshake
// slot in sidecar A do so before A connects to B, so that B never sees a
// connection stay silent: B's detection would take it for a plaintext
// client (sniff time-out) and hand the ClientHello that follows to the
// application. 200 opaque connections at once, A handshaking one at a time:
// all reach the application over mTLS, none as plaintext.
func TestHandshakeQueueBeforeConnect(t *testing.T) {
	var reached atomic.Int64
	app := loopbackServer(t, func(c net.Conn) {
		reached.Add(1)
		_, _ = io.Copy(io.Discard, c)
	})
	cfgA, cfgB := benchConfig(), benchConfig()
	cfgA.MaxHandshakes = 1
	cfgB.SniffTimeout = 20 * time.Millisecond
	front, _, b := meshPair(t, app, cfgA, cfgB)
	const n = 200
	for range n {
		c, err := net.Dial("tcp", front.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
	}
	st := &b.Stats().Dir[Inbound]
	waitFor(t, "every connection at the application", func() bool { return reached.Load() == n })
	if m, p := st.MTLS.Load(), st.Plaintext.Load(); m != n || p != 0 {
		t.Errorf("B took %d connections over mTLS and %d as plaintext, want %d and none", m, p, n)
	}
}

// TestHandshakeQueueOutlastsDialTimeout: the wait for a handshake slot is
// not the dial's time: a connection queued three dial time-outs behind a
// handshake in flight still reaches the application once the slot frees
// (a burst of 10,000 new connections takes about 12 s to clear).
func TestHandshakeQueueOutlastsDialTimeout(t *testing.T) {
	reached := make(chan struct{}, 1)
	app := loopbackServer(t, func(c net.Conn) {
		reached <- struct{}{}
		_, _ = io.Copy(io.Discard, c)
	})
	cfgA, cfgB := benchConfig(), benchConfig()
	cfgA.MaxHandshakes = 1
	cfgA.DialTimeout = 100 * time.Millisecond
	front, a, _ := meshPair(t, app, cfgA, cfgB)
	release, err := a.handshakes.acquire(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(3*cfgA.DialTimeout, release)
	c, err := net.Dial("tcp", front.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(5 * time.Second):
		t.Fatalf("the queued connection never reached the application (handshakes timed out in the queue: %d)", a.handshakes.timeouts.Load())
	}
}
