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
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/upstream"
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

// TestDialer: the dialer alone connects to an endpoint that is not meshed
// in plain TCP; refuses a meshed one while the identity has no SVID,
// counted, before it takes a handshake slot or connects; and, inbound,
// returns the application's refusal wrapped.
func TestDialer(t *testing.T) {
	var st DirStats
	d := &dialer{
		timeout:    time.Second,
		mesh:       newMeshTLS(notReady{svidtest.Source{Err: errNotYet}}),
		handshakes: newHandshakes(1),
		stats:      &st,
		log:        zap.NewNop(),
	}
	ctx := context.Background()
	app := echoServer(t)
	c, err := d.dial(ctx, upstream.Endpoint{Addr: app}, mtls.ProtoTCP)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("an endpoint not meshed: %T, want plain TCP", c)
	}
	c.Close()

	if _, err := d.dial(ctx, upstream.Endpoint{Addr: app, Meshed: true}, mtls.ProtoTCP); !errors.Is(err, mtls.ErrNoSVID) {
		t.Errorf("a meshed endpoint without an SVID: %v, want ErrNoSVID", err)
	}
	if n := st.TLSFailures[mtls.FailureNoSVID].Load(); n != 1 || d.handshakes.waited.Load() != 0 || d.handshakes.peak.Load() != 0 {
		t.Errorf("no-SVID failures %d (want 1), handshake slots taken %d (want none)", n, d.handshakes.peak.Load())
	}

	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
	_, err = d.dialApp(ctx, closed)
	if want := "proxy: connecting to the application at " + closed.String() + ": "; err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the application refusing: %v, want %q and ECONNREFUSED", err, want)
	}
}
