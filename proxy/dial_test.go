package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

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
