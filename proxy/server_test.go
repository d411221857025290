package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
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

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", DefaultConfig(), ""},
		{"zero outbound", mod(func(c *Config) { c.OutboundPort = 0 }), "proxy: OutboundPort: must be 1-65535"},
		{"same ports", mod(func(c *Config) { c.InboundPort = c.OutboundPort }), "proxy: InboundPort: 15001 is also the outbound port; they must differ"},
		{"dial timeout", mod(func(c *Config) { c.DialTimeout = 0 }), "proxy: DialTimeout: 0s: must be positive"},
		{"max conns", mod(func(c *Config) { c.MaxConnections = -1 }), "proxy: MaxConnections: -1: must be positive"},
		{"drain", mod(func(c *Config) { c.DrainTimeout = -time.Second }), "proxy: DrainTimeout: -1s: must not be negative"},
		{"drain period", mod(func(c *Config) { c.DrainPeriod = -time.Second }), "proxy: DrainPeriod: -1s: must not be negative (0 closes the listeners at once)"},
		{"no drain period", mod(func(c *Config) { c.DrainPeriod = 0 }), ""},
		{"idle", mod(func(c *Config) { c.IdleTimeout = -time.Second }), "proxy: IdleTimeout: -1s: must not be negative (0 means no limit)"},
		{"no idle limit", mod(func(c *Config) { c.IdleTimeout = 0 }), ""},
		{"pool idle", mod(func(c *Config) { c.Pool.HTTP1IdleTimeout = -time.Second }), "proxy: Pool.HTTP1IdleTimeout: -1s: must not be negative"},
		{"sniff", mod(func(c *Config) { c.SniffTimeout = 0 }), "proxy: SniffTimeout: 0s: must be positive"},
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
			// The field is there for the caller to name in its own terms.
			var fe *FieldError
			if err != nil && (!errors.As(err, &fe) || !strings.HasPrefix(tt.want, "proxy: "+fe.Field+": ")) {
				t.Errorf("Validate() = %#v, want a *FieldError naming the field of %q", err, tt.want)
			}
		})
	}
}
