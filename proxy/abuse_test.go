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
	"syscall"
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

// TestEverySecond: one line a second, the rest counted and reported with
// the next line.
func TestEverySecond(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	var e everySecond
	for range 5 {
		if ce, n := e.check(log, zapcore.WarnLevel, "flood"); ce != nil {
			ce.Write(zap.Int64("suppressed", n))
		}
	}
	if ce, _ := e.check(log, zapcore.DebugLevel, "below the level"); ce != nil {
		t.Error("a line below the logger's level was let through")
	}
	e.last.Add(-int64(time.Second)) // a second later
	if ce, n := e.check(log, zapcore.WarnLevel, "flood"); ce != nil {
		ce.Write(zap.Int64("suppressed", n))
	}
	var got []int64
	for _, l := range logs.All() {
		got = append(got, l.ContextMap()["suppressed"].(int64))
	}
	if len(got) != 2 || got[0] != 0 || got[1] != 4 {
		t.Errorf("lines written with suppressed = %v, want [0 4]", got)
	}
}

// TestOverLimitRefusedAtOnce: connections over MaxConnections are reset
// at once, each counted, with one warning for the lot (at most one a
// second) that says how many it stands for once the next comes.
func TestOverLimitRefusedAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxConnections = 1
	core, logs := observer.New(zapcore.InfoLevel)
	s := runServer(t, cfg, zap.New(core), netip.MustParseAddr("127.0.0.1"), fixed(echoServer(t)), true)
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.cfg.OutboundPort).String()
	hold, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, "the first connection active", func() bool { return s.admission.active.Load() == 1 })
	const over = 20
	for i := range over {
		start := time.Now()
		// The reset may come before the connect returns: then the
		// connect says so.
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) || time.Since(start) > time.Second {
			t.Fatalf("connection %d over the limit: %v after %v, want a reset at once", i, err, time.Since(start))
		}
	}
	if n := s.Stats().Dir[Outbound].OverLimit.Load(); n != over {
		t.Errorf("over-limit count %d, want %d", n, over)
	}
	if n := logs.FilterMessage("connection limit reached: refusing").Len(); n != 1 {
		t.Errorf("%d over-limit warnings for %d refusals within a second, want 1", n, over)
	}
	s.admission.warnOverLimit.last.Add(-int64(time.Second)) // a second later
	if c, err := net.Dial("tcp", addr); err == nil {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	warned := logs.FilterMessage("connection limit reached: refusing").All()
	if len(warned) != 2 || warned[1].ContextMap()["suppressed"] != int64(over-1) {
		t.Errorf("warnings %v, want a second one saying %d were held back", warned, over-1)
	}
}
