package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// testServer runs a Server on loopback with free ports and a fake original
// destination, and stops it when the test ends.
func testServer(t testing.TB, cfg Config, origDst func(*net.TCPConn) (netip.AddrPort, error)) *Server {
	t.Helper()
	return startServer(t, cfg, origDst, true)
}

// startServer is testServer that waits for Ready only if ready is true,
// else until the listeners accept (a server without an SVID is never
// ready).
func startServer(t testing.TB, cfg Config, origDst func(*net.TCPConn) (netip.AddrPort, error), ready bool) *Server {
	t.Helper()
	return runServer(t, cfg, zap.NewNop(), netip.MustParseAddr("127.0.0.1"), origDst, ready)
}

// runServer is startServer with the server's logger and the IPv4 address
// it listens on (loopback, or an address of this host that is not, for a
// peer sidecar another server reaches in mTLS).
func runServer(t testing.TB, cfg Config, log *zap.Logger, bind netip.Addr, origDst func(*net.TCPConn) (netip.AddrPort, error), ready bool) *Server {
	t.Helper()
	p := freePorts(t, 2)
	cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
	s, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	s.origDst = origDst
	s.bindV4 = bind
	s.bindV6 = netip.IPv6Loopback()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { s.Quit(); cancel(); <-done }) // no drain period
	if !ready {
		waitFor(t, "the listeners", func() bool {
			c, err := net.Dial("tcp", netip.AddrPortFrom(bind, s.cfg.InboundPort).String())
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return s
	}
	select {
	case <-s.Ready():
	case err := <-done:
		done <- err // the cleanup waits for it: taken here, it hung the test
		t.Fatalf("Run: %v", err)
	}
	return s
}

func freePort(t testing.TB) uint16 { return freePorts(t, 1)[0] }

// freePorts returns n distinct ports that were free a moment ago.
func freePorts(t testing.TB, n int) []uint16 {
	t.Helper()
	var ports []uint16
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, uint16(l.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

func fixed(ap netip.AddrPort) func(*net.TCPConn) (netip.AddrPort, error) {
	return func(*net.TCPConn) (netip.AddrPort, error) { return ap, nil }
}

// loopbackServer runs handle for each connection accepted on a loopback
// port until the test ends, and returns the address.
func loopbackServer(t testing.TB, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, l, handle)
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// echoServer answers each connection with "echo:" and what it read.
func echoServer(t testing.TB) netip.AddrPort {
	t.Helper()
	return loopbackServer(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("echo:"), b...))
	})
}

func roundTrip(t *testing.T, port uint16, msg string) (string, error) {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)))
	if err != nil {
		// On loopback a reset can come before connect(2) returns.
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestOutboundGoesToOriginalDestination(t *testing.T) {
	backend := echoServer(t)
	s := testServer(t, DefaultConfig(), fixed(backend))
	got, err := roundTrip(t, s.cfg.OutboundPort, "hello")
	if err != nil || got != "echo:hello" {
		t.Fatalf("round trip = %q, %v; want %q", got, err, "echo:hello")
	}
	st := &s.Stats().Dir[Outbound]
	waitFor(t, "completed count", func() bool { return st.Completed.Load() == 1 })
	if snap := st.Load(); snap.Accepted != 1 || snap.BytesSent != 5 || snap.BytesRecv != 10 {
		t.Errorf("outbound stats = %+v, want 1 accepted, 5 sent, 10 received", snap)
	}
}

// TestInboundGoesToAppAtOriginalDestination: the inbound side connects
// to the application at the connection's original destination (the pod
// IP, here an address of this host that is not loopback) from 127.0.0.6;
// an application listening on localhost only is not reached there, and
// the refusal is counted.
func TestInboundGoesToAppAtOriginalDestination(t *testing.T) {
	hostIP := nonLoopbackIPv4(t)
	l, err := net.Listen("tcp", netip.AddrPortFrom(hostIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	// The app answers with the address it saw the connection come from.
	meshtest.Serve(t, l, func(c net.Conn) {
		_, _ = io.ReadAll(c)
		_, _ = io.WriteString(c, addrPort(c.RemoteAddr()).Addr().String())
	})
	app := l.Addr().(*net.TCPAddr).AddrPort()
	s := testServer(t, DefaultConfig(), fixed(app))
	if got, err := roundTrip(t, s.cfg.InboundPort, "hi"); err != nil || got != "127.0.0.6" {
		t.Fatalf("the app saw %q (%v); want the inbound sidecar's source 127.0.0.6", got, err)
	}
	st := &s.Stats().Dir[Inbound]
	if n := st.Accepted.Load(); n != 1 {
		t.Errorf("inbound accepted = %d, want 1", n)
	}

	// A listener on 127.0.0.1 only, at the port the peer asked of the pod
	// IP: refused, the client reset, counted as a failed connect.
	private := echoServer(t)
	s = testServer(t, DefaultConfig(), fixed(netip.AddrPortFrom(hostIP, private.Port())))
	if got, err := roundTrip(t, s.cfg.InboundPort, "hi"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("to a localhost-only listener: %q, %v; want a reset", got, err)
	}
	st = &s.Stats().Dir[Inbound]
	waitFor(t, "the failed connect counted", func() bool { return st.DialFailures.Load() == 1 })
}

func TestConnectionToOwnListenerRefused(t *testing.T) {
	// What the kernel answers for a connection made straight to the
	// listener, not redirected: the listener's own address.
	s := testServer(t, DefaultConfig(), func(c *net.TCPConn) (netip.AddrPort, error) {
		return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
	})
	_, err := roundTrip(t, s.cfg.OutboundPort, "x")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client error = %v, want a reset", err)
	}
	if snap := s.Stats().Dir[Outbound].Load(); snap.Loops != 1 || snap.Completed != 0 {
		t.Errorf("stats = %+v, want 1 loop refused and nothing relayed", snap)
	}
}

func TestOwnListenerOnPodAddressIsALoop(t *testing.T) {
	s, err := New(DefaultConfig(), zap.NewNop()) // not running: only the check
	if err != nil {
		t.Fatal(err)
	}
	s.detector.localAddrs = func() ([]net.Addr, error) {
		return []net.Addr{&net.IPNet{IP: net.ParseIP("198.18.0.3"), Mask: net.CIDRMask(24, 32)}}, nil
	}
	for _, tt := range []struct {
		dst  string
		want bool
	}{
		{"198.18.0.3:15001", true},
		{"198.18.0.3:8080", false},
		{"198.18.0.4:15001", false}, // another pod's port 15001 is not ours
		{"0.0.0.0:15006", true},
		{"[::1]:15006", true},
	} {
		if got := s.detector.isOwnListener(netip.MustParseAddrPort(tt.dst)); got != tt.want {
			t.Errorf("isOwnListener(%s) = %v, want %v", tt.dst, got, tt.want)
		}
	}
}

func TestUpstreamRefusalResetsClient(t *testing.T) {
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	s := testServer(t, DefaultConfig(), fixed(closed))
	_, err := roundTrip(t, s.cfg.OutboundPort, "x")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client error = %v, want a reset", err)
	}
	if n := s.Stats().Dir[Outbound].DialFailures.Load(); n != 1 {
		t.Errorf("dial failures = %d, want 1", n)
	}
}

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

// startRun starts s.Run on loopback and returns a func that cancels it and
// a channel that receives Run's result.
func startRun(t *testing.T, s *Server) (stop func(), done <-chan error) {
	t.Helper()
	s.bindV4, s.bindV6 = netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan error, 1)
	go func() { d <- s.Run(ctx) }()
	<-s.Ready()
	t.Cleanup(func() { s.Quit(); cancel() })
	return cancel, d
}

func TestDrain(t *testing.T) {
	backend := echoServer(t)
	cfg := DefaultConfig()
	p := freePorts(t, 2)
	cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
	cfg.DrainPeriod = 0 // TestDrainPeriod has one
	cfg.DrainTimeout = 300 * time.Millisecond
	s, _ := New(cfg, zap.NewNop())
	s.origDst = fixed(backend)
	stop, done := startRun(t, s)
	proxyAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cfg.OutboundPort).String()

	// Two connections are open when shutdown starts: one finishes within
	// the drain window, the other never does.
	finisher, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer finisher.Close()
	straggler, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer straggler.Close()
	waitFor(t, "connections active", func() bool { return s.Stats().Dir[Outbound].Active.Load() == 2 })
	start := time.Now()
	stop()

	// New connections are refused at once.
	waitFor(t, "listener closed", func() bool {
		c, err := net.Dial("tcp", proxyAddr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The finisher completes inside the window, untouched.
	time.Sleep(50 * time.Millisecond)
	_ = finisher.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := finisher.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	_ = finisher.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(finisher); err != nil || string(got) != "echo:late" {
		t.Errorf("connection finishing inside the drain window got %q, %v", got, err)
	}

	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the drain time-out")
	}
	if el := time.Since(start); el < cfg.DrainTimeout {
		t.Errorf("Run returned after %v, before the drain time-out %v", el, cfg.DrainTimeout)
	}
	// The straggler is reset, not closed: a cut-off stream must not look complete.
	_ = straggler.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := straggler.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("straggler read = %v, want a reset", err)
	}
}

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", DefaultConfig(), ""},
		{"zero outbound", mod(func(c *Config) { c.OutboundPort = 0 }), "--outbound-port: must be 1-65535"},
		{"same ports", mod(func(c *Config) { c.InboundPort = c.OutboundPort }), "--inbound-port: 15001 is also the outbound port; they must differ"},
		{"dial timeout", mod(func(c *Config) { c.DialTimeout = 0 }), "--dial-timeout: 0s: must be positive"},
		{"max conns", mod(func(c *Config) { c.MaxConnections = -1 }), "--max-connections: -1: must be positive"},
		{"drain", mod(func(c *Config) { c.DrainTimeout = -time.Second }), "--drain-timeout: -1s: must not be negative"},
		{"drain period", mod(func(c *Config) { c.DrainPeriod = -time.Second }), "--drain-period: -1s: must not be negative (0 closes the listeners at once)"},
		{"no drain period", mod(func(c *Config) { c.DrainPeriod = 0 }), ""},
		{"idle", mod(func(c *Config) { c.IdleTimeout = -time.Second }), "--idle-timeout: -1s: must not be negative (0 means no limit)"},
		{"no idle limit", mod(func(c *Config) { c.IdleTimeout = 0 }), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}
