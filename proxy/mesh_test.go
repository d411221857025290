package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// readyIdentity is an Identity that is always ready.
type readyIdentity struct{ svidtest.Source }

func (readyIdentity) Ready() error { return nil }

// TestInboundMTLSCounts: what the inbound side does with each kind of
// client, and what it counts: a peer sidecar (relayed, MTLS), a peer of
// another trust domain (refused, TLSFailures), plaintext under PERMISSIVE
// (passed, Plaintext) and STRICT (refused, PlaintextRefused), and a peer
// the authz filter denies on TCP (closed, Denied).
func TestInboundMTLSCounts(t *testing.T) {
	backend := echoServer(t)
	dst := backend // the original destination is where the application listens
	ca := svidtest.CA(t, "", "cluster.local")
	other := svidtest.CA(t, "", "other.org")
	cfg := DefaultConfig()
	cfg.OpaquePorts.Ports = nil
	cfg.Identity = readyIdentity{svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/b/sa/b")}
	s := testServer(t, cfg, fixed(dst))
	st := &s.Stats().Dir[Inbound]

	peer := svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/a/sa/a")
	if got, err := mtlsRoundTrip(t, s.cfg.InboundPort, peer, "hello"); err != nil || got != "echo:hello" {
		t.Fatalf("peer sidecar: %q, %v; want echo:hello", got, err)
	}
	waitFor(t, "an mTLS connection counted", func() bool { return st.MTLS.Load() == 1 })

	stranger := svidtest.Source{SVID: svidtest.Issue(t, other, "spiffe://other.org/ns/a/sa/a"), Bundles: x509bundle.NewSet(ca.Bundle(), other.Bundle())}
	if got, err := mtlsRoundTrip(t, s.cfg.InboundPort, stranger, "hello"); err == nil {
		t.Errorf("a peer of another trust domain got %q", got)
	}
	waitFor(t, "the refusal counted", func() bool { return st.TLSFailures[mtls.FailureOtherTrustDomain].Load() == 1 })

	if got, err := roundTrip(t, s.cfg.InboundPort, "plain"); err != nil || got != "echo:plain" {
		t.Errorf("plaintext under PERMISSIVE: %q, %v; want echo:plain", got, err)
	}
	waitFor(t, "plaintext counted", func() bool { return st.Plaintext.Load() == 1 })

	apply(t, s, "mesh: {mode: STRICT}\ninbound: {filters: [{authz: {allow: [{id: \"*\", paths: [/x]}]}}]}")
	if got, err := roundTrip(t, s.cfg.InboundPort, "plain"); err == nil && got != "" {
		t.Errorf("plaintext under STRICT: %q", got)
	}
	waitFor(t, "plaintext refused counted", func() bool { return st.PlaintextRefused.Load() == 1 })
	// An allow rule with a path never matches a TCP connection.
	if got, err := mtlsRoundTrip(t, s.cfg.InboundPort, peer, "hello"); err == nil && got != "" {
		t.Errorf("a denied peer got %q", got)
	}
	waitFor(t, "the denial counted", func() bool { return st.Denied.Load() == 1 })
	if n := st.Plaintext.Load(); n != 1 {
		t.Errorf("Plaintext = %d after STRICT, want still 1", n)
	}
}

// TestOutboundNeverPlaintextToTheMesh: without an SVID, a connection to a
// meshed destination fails, is counted as such, and nothing reaches the
// destination, which listens on an address of this host that is not
// loopback (loopback is never meshed).
func TestOutboundNeverPlaintextToTheMesh(t *testing.T) {
	ip := nonLoopbackIPv4(t)
	l, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	// Counted: connections that carry a byte (startServer's probe of the
	// inbound listener, which delivers to the original destination, does
	// not).
	var reached atomic.Int64
	meshtest.Serve(t, l, func(c net.Conn) {
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			reached.Add(1)
		}
	})
	dst := l.Addr().(*net.TCPAddr).AddrPort()

	cfg := DefaultConfig()
	cfg.OpaquePorts.Ports = nil
	cfg.Identity = notReady{svidtest.Source{Err: errNotYet}}
	s := startServer(t, cfg, fixed(dst), false)
	apply(t, s, "mesh: {networks: ["+ip.String()+"/32]}")
	if got, err := roundTrip(t, s.cfg.OutboundPort, "secret"); err == nil && got != "" {
		t.Errorf("got %q from a meshed destination without an SVID", got)
	}
	waitFor(t, "the failure counted", func() bool { return s.Stats().Dir[Outbound].TLSFailures[mtls.FailureNoSVID].Load() == 1 })
	if n := reached.Load(); n != 0 {
		t.Errorf("the destination was reached %d times", n)
	}
	// The control: the same destination, not meshed, is reached.
	apply(t, s, "mesh: {networks: []}")
	_, _ = roundTrip(t, s.cfg.OutboundPort, "plain")
	waitFor(t, "the unmeshed destination reached", func() bool { return reached.Load() == 1 })
	if state, err := s.State(); err == nil || state != StateInitializing {
		t.Errorf("State = %s, %v without an SVID; want INITIALIZING and why", state, err)
	}
}

// nonLoopbackIPv4 returns an IPv4 address of this host that is not
// loopback.
func nonLoopbackIPv4(t testing.TB) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr()
		}
	}
	t.Fatal("this host has no IPv4 address but loopback")
	return netip.Addr{}
}

type notReady struct{ svidtest.Source }

func (n notReady) Ready() error { return n.Err }

var errNotYet = io.ErrUnexpectedEOF

func apply(t testing.TB, s *Server, y string) {
	t.Helper()
	f, err := configfile.Parse([]byte(y), builtin.Registry())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(f); err != nil {
		t.Fatal(err)
	}
}

// mtlsRoundTrip connects to the inbound port as a peer sidecar with src's
// SVID asking for an opaque stream, sends msg, half-closes and reads the
// answer.
func mtlsRoundTrip(t *testing.T, port uint16, src svidtest.Source, msg string) (string, error) {
	t.Helper()
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tc := tls.Client(c, mtls.ClientConfig(src, mtls.AuthorizeMemberOf(td), mtls.ProtoTCP))
	if _, err := tc.Write([]byte(msg)); err != nil {
		return "", err
	}
	if err := tc.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(tc)
	return string(b), err
}
