package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestHeaderTimeout: a client that starts a request's headers and stops is
// closed once the header time-out passes, counted, and logged; a client
// that sent whole requests and then sits idle on its keep-alive connection
// past that time is not (idle is not slow).
func TestHeaderTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HeaderTimeout = 300 * time.Millisecond
	core, logs := observer.New(zapcore.DebugLevel)
	s := runServer(t, cfg, zap.New(core), netip.MustParseAddr("127.0.0.1"), fixed(httpBackend(t)), true)
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.cfg.OutboundPort).String()

	// Idle after a whole request: kept.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "GET /idle HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if res, err := http.ReadResponse(bufio.NewReader(idle), nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("the whole request: %v %v", res, err)
	}

	// The request line at once (detection serves it as HTTP), then a
	// header that stops, or one that drips a byte every 50 ms: either is
	// closed when the header time-out passes, however busy the drip.
	closedAfter := func(drip bool) time.Duration {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: 1"); err != nil {
			t.Fatal(err)
		}
		if drip {
			go func() {
				for range time.Tick(50 * time.Millisecond) {
					if _, err := io.WriteString(c, "1"); err != nil {
						return
					}
				}
			}()
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("drip %v: read %v, want the connection closed", drip, err)
		}
		return time.Since(start)
	}
	for _, drip := range []bool{false, true} {
		if took := closedAfter(drip); took < cfg.HeaderTimeout || took > cfg.HeaderTimeout+time.Second {
			t.Errorf("drip %v: closed after %v, want the header time-out %v", drip, took, cfg.HeaderTimeout)
		}
	}
	waitFor(t, "two header time-outs counted", func() bool { return s.Stats().Dir[Outbound].HeaderTimeouts.Load() == 2 })

	// The idle connection outlived the header time-out and still serves.
	time.Sleep(cfg.HeaderTimeout)
	if _, err := io.WriteString(idle, "GET /again HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if res, err := http.ReadResponse(bufio.NewReader(idle), nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("the idle connection's next request: %v %v", res, err)
	}
	if n := s.Stats().Dir[Outbound].HeaderTimeouts.Load(); n != 2 {
		t.Errorf("header time-outs = %d, want 2 (the idle connection is not one)", n)
	}
	// One warning for the two (a second apart at most), then the second
	// counted as held back with the next.
	warned := logs.FilterMessage("closing connections whose request headers did not arrive in time").All()
	if len(warned) != 1 {
		t.Errorf("%d header time-out warnings, want 1 (at most one a second)", len(warned))
	}
	var ended int
	for _, e := range logs.FilterMessage("connection").All() {
		if strings.Contains(e.ContextMap()["ended_by"].(string), "header time-out") {
			ended++
		}
		if e.Level != zapcore.DebugLevel { // thousands a second on a busy sidecar
			t.Errorf("connection line at %v, want debug", e.Level)
		}
	}
	if ended != 2 {
		t.Errorf("%d connection lines ended by the header time-out, want 2", ended)
	}
}
