package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestConnectionCap(t *testing.T) {
	backend := echoServer(t)
	cfg := DefaultConfig()
	cfg.MaxConnections = 1
	s := testServer(t, cfg, fixed(backend))
	// Hold one connection open (no half-close yet).
	hold, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.cfg.OutboundPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, "first connection active", func() bool { return s.Stats().Dir[Outbound].Active.Load() == 1 })
	if _, err := roundTrip(t, s.cfg.OutboundPort, "x"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("second connection error = %v, want a reset", err)
	}
	if n := s.Stats().Dir[Outbound].OverLimit.Load(); n != 1 {
		t.Errorf("over-limit count = %d, want 1", n)
	}
	hold.Close()
	waitFor(t, "slot freed", func() bool { return s.admission.active.Load() == 0 })
	if got, err := roundTrip(t, s.cfg.OutboundPort, "y"); got != "echo:y" {
		t.Errorf("after the first closed: %q, %v; want echo:y", got, err)
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
	time.Sleep(time.Second + 50*time.Millisecond) // the next warning may go out a second later
	if c, err := net.Dial("tcp", addr); err == nil {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	warned := logs.FilterMessage("connection limit reached: refusing").All()
	if len(warned) != 2 || warned[1].ContextMap()["suppressed"] != int64(over-1) {
		t.Errorf("warnings %v, want a second one saying %d were held back", warned, over-1)
	}
}

// loopbackPair returns both ends of a TCP connection on loopback: the
// accepted one and the client's.
func loopbackPair(t *testing.T) (accepted, client *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	accepted, err = l.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return accepted, client
}

// wasReset reports whether the client end c was reset.
func wasReset(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, syscall.ECONNRESET)
}

// TestAdmission: admission alone lets connections in up to its limit,
// resets and counts the one over it, lets one in again once another left,
// and at the drain time-out resets every socket it tracks and refuses
// those that come after.
func TestAdmission(t *testing.T) {
	a := admission{max: 1, conns: map[*net.TCPConn]struct{}{}}
	var st DirStats
	log := zap.NewNop()
	first, _ := loopbackPair(t)
	if !a.admit(first, Outbound, &st, log) {
		t.Fatal("the first connection was refused")
	}
	over, overClient := loopbackPair(t)
	if a.admit(over, Outbound, &st, log) || !wasReset(t, overClient) || st.OverLimit.Load() != 1 {
		t.Errorf("over the limit: not refused, reset and counted (over-limit %d)", st.OverLimit.Load())
	}
	a.leave(first)
	second, secondClient := loopbackPair(t)
	if !a.admit(second, Outbound, &st, log) {
		t.Fatal("a connection was refused after the first left")
	}
	select {
	case <-a.allDone():
		t.Fatal("allDone while a connection is in")
	case <-time.After(10 * time.Millisecond):
	}

	up, upClient := loopbackPair(t) // the other end of second's relay
	if !a.track(up) {
		t.Fatal("an upstream socket was not tracked")
	}
	a.resetAll(log)
	if !wasReset(t, secondClient) || !wasReset(t, upClient) {
		t.Error("the drain time-out did not reset every tracked socket")
	}
	late, lateClient := loopbackPair(t)
	if a.track(late) || a.admit(late, Outbound, &st, log) || !wasReset(t, lateClient) {
		t.Error("a socket after the final reset was not refused and reset")
	}
	a.leave(second)
	<-a.allDone()
	if n := a.active.Load(); n != 0 {
		t.Errorf("%d connections active after all left, want 0", n)
	}
}
