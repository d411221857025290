// Package e2e holds the tests that cross components: the real pillion
// binary, real iptables rules, real network namespaces.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// The binaries under test, built once by TestMain: pillionBin is the lean
// build the sidecar image ships (init, proxy, wait, identity), controlBin
// the full one of the control plane (injector, discovery, inject).
var pillionBin, controlBin string

func TestMain(m *testing.M) {
	root, err := meshtest.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lean, removeLean, err := meshtest.Build(root, "lean")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	full, removeFull, err := meshtest.Build(root)
	if err != nil {
		removeLean()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pillionBin, controlBin = lean, full
	code := m.Run()
	removeLean()
	removeFull()
	os.Exit(code)
}

// mesh is three pods on one node: a and b run pillion, c does not.
//
//	a: client; outbound port 9001 and pod c's addresses excluded from capture
//	b: server; inbound port 9002 excluded; echo on 8080, 9001, 9002, sink on 8081,
//	   server-first greeters on 7000 and 3306
//	c: server without a sidecar; echo on 8080, sink on 8081
//
// a's sidecar gives up connecting after dialTimeout.
const dialTimeout = 500 * time.Millisecond

type mesh struct {
	a, b *meshtest.Sidecar
	c    *testpod.Pod
}

func newMesh(t testing.TB) *mesh {
	t.Helper()
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv")
	node := testpod.NewNode(t)
	podA, podB, podC := node.AddPod(t, "a"), node.AddPod(t, "b"), node.AddPod(t, "c")
	for _, port := range []string{":8080", ":9001", ":9002"} {
		meshtest.ServeEcho(t, podB, port)
	}
	meshtest.ServeSink(t, podB, ":8081")
	meshtest.ServeHello(t, podB, ":7000")
	meshtest.ServeHello(t, podB, ":3306") // a default opaque port (MySQL)
	meshtest.ServeEcho(t, podC, ":8080")
	meshtest.ServeSink(t, podC, ":8081")
	return &mesh{
		a: meshtest.Inject(t, pillionBin, podA, []string{
			"--exclude-outbound-ports=9001",
			"--exclude-outbound-ip-ranges=" + podC.IPv4.String() + "/32," + podC.IPv6.String(),
		}, []string{"--dial-timeout=" + dialTimeout.String()}),
		b: meshtest.Inject(t, pillionBin, podB, []string{"--exclude-inbound-ports=9002"}, nil),
		c: podC,
	}
}

func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

func TestCapture(t *testing.T) {
	m := newMesh(t)
	a, b := m.a.Pod, m.b.Pod

	for _, fam := range []struct {
		name    string
		dst     netip.Addr
		src     netip.Addr
		inbound string // the inbound sidecar's source address
	}{
		{"ipv4", b.IPv4, a.IPv4, "127.0.0.6"},
		{"ipv6", b.IPv6, a.IPv6, "::6"},
	} {
		t.Run("echo through both sidecars/"+fam.name, func(t *testing.T) {
			dst := hostPort(fam.dst, 8080)
			peer, echoed, err := meshtest.Call(a, dst, "ping "+fam.name)
			if err != nil {
				t.Fatal(err)
			}
			if echoed != "ping "+fam.name {
				t.Errorf("echo = %q", echoed)
			}
			// The app saw the inbound sidecar (from 127.0.0.6 / ::6), not pod a.
			if peer != fam.inbound {
				t.Errorf("server saw peer %s, want the inbound sidecar from %s", peer, fam.inbound)
			}
			out, ok := m.a.WaitConnection("outbound", dst, 5*time.Second)
			if !ok {
				t.Fatalf("a's sidecar logged no outbound connection to %s:\n%s", dst, m.a.Proxy.Output())
			}
			in, ok := m.b.WaitConnection("inbound", dst, 5*time.Second)
			if !ok {
				t.Fatalf("b's sidecar logged no inbound connection to %s:\n%s", dst, m.b.Proxy.Output())
			}
			// ...which delivered at the pod IP the peer asked for.
			if in.Upstream != dst {
				t.Errorf("b's sidecar forwarded to %s, want %s", in.Upstream, dst)
			}
			// The inbound sidecar's peer is pod a's address: a's sidecar dialled as itself.
			if !strings.HasPrefix(in.Src, strings.TrimSuffix(hostPort(fam.src, 0), ":0")+":") {
				t.Errorf("b's sidecar saw source %s, want pod a (%s)", in.Src, fam.src)
			}
			if out.BytesSent != int64(len("ping "+fam.name)) || in.BytesReceived != int64(len(fam.inbound)+1+len("ping "+fam.name)) {
				t.Errorf("byte counts: a sent %d, b received %d", out.BytesSent, in.BytesReceived)
			}
		})
	}

	t.Run("256 MiB intact", func(t *testing.T) {
		got, want, err := meshtest.Send(a, hostPort(b.IPv4, 8081), 256<<20)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("sink answered %q, want %q", got, want)
		}
		for _, sc := range []struct {
			sc  *meshtest.Sidecar
			dir string
		}{{m.a, "outbound"}, {m.b, "inbound"}} {
			l, ok := sc.sc.WaitConnection(sc.dir, hostPort(b.IPv4, 8081), 5*time.Second)
			if !ok {
				t.Errorf("the transfer did not go through %s's %s sidecar", sc.sc.Pod.Name, sc.dir)
			} else if l.BytesSent != 256<<20 {
				t.Errorf("%s's sidecar relayed %d bytes, want %d", sc.sc.Pod.Name, l.BytesSent, 256<<20)
			}
		}
	})

	t.Run("half-close", func(t *testing.T) {
		// Call shuts its write side; the server answers only after EOF.
		_, echoed, err := meshtest.Call(a, hostPort(b.IPv4, 8080), "question")
		if err != nil || echoed != "question" {
			t.Fatalf("answer after half-close = %q, %v", echoed, err)
		}
	})

	t.Run("excluded outbound port bypasses a's sidecar", func(t *testing.T) {
		dst := hostPort(b.IPv4, 9001)
		peer, _, err := meshtest.Call(a, dst, "x")
		if err != nil {
			t.Fatal(err)
		}
		if peer != "127.0.0.6" {
			t.Errorf("server saw %s, want b's inbound sidecar (port 9001 is only excluded outbound in a)", peer)
		}
		if _, ok := m.b.WaitConnection("inbound", dst, 5*time.Second); !ok {
			t.Fatal("b's sidecar did not see it")
		}
		if c := m.a.Connections("outbound", dst); len(c) != 0 {
			t.Errorf("a's sidecar saw an excluded port: %+v", c)
		}
	})

	t.Run("excluded inbound port bypasses b's sidecar", func(t *testing.T) {
		dst := hostPort(b.IPv4, 9002)
		peer, _, err := meshtest.Call(a, dst, "x")
		if err != nil {
			t.Fatal(err)
		}
		if peer != a.IPv4.String() {
			t.Errorf("server saw %s, want pod a's address %s straight from a's sidecar", peer, a.IPv4)
		}
		if _, ok := m.a.WaitConnection("outbound", dst, 5*time.Second); !ok {
			t.Fatal("a's sidecar did not see it")
		}
		if c := m.b.Connections("inbound", dst); len(c) != 0 {
			t.Errorf("b's sidecar saw an excluded inbound port: %+v", c)
		}
	})

	for _, c := range []netip.Addr{m.c.IPv4, m.c.IPv6} {
		t.Run("excluded CIDR bypasses a's sidecar/"+c.String(), func(t *testing.T) {
			dst := hostPort(c, 8080)
			peer, _, err := meshtest.Call(a, dst, "x")
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]netip.Addr{false: a.IPv4, true: a.IPv6}[c.Is6()]; peer != want.String() {
				t.Errorf("server saw %s, want pod a %s", peer, want)
			}
			// A later captured call is logged; the excluded one never was.
			if _, _, err := meshtest.Call(a, hostPort(b.IPv4, 8080), "marker"); err != nil {
				t.Fatal(err)
			}
			// Wait for both sidecars' lines, so none arrives late in a later subtest.
			if _, ok := m.a.WaitConnection("outbound", hostPort(b.IPv4, 8080), 5*time.Second); !ok {
				t.Fatal("marker call not logged by a")
			}
			if _, ok := m.b.WaitConnection("inbound", hostPort(b.IPv4, 8080), 5*time.Second); !ok {
				t.Fatal("marker call not logged by b")
			}
			if got := m.a.Connections("outbound", dst); len(got) != 0 {
				t.Errorf("a's sidecar saw an excluded CIDR: %+v", got)
			}
		})
	}

	for _, self := range []struct{ ip, inbound string }{
		{b.IPv4.String(), "127.0.0.6"},
		{b.IPv6.String(), "::6"},
	} {
		t.Run("app calls its own pod IP/"+self.ip, func(t *testing.T) {
			dst := hostPort(netip.MustParseAddr(self.ip), 8080)
			peer, echoed, err := meshtest.Call(b, dst, "self")
			if err != nil || echoed != "self" {
				t.Fatalf("call to own pod IP = %q, %v", echoed, err)
			}
			if peer != self.inbound {
				t.Errorf("app saw %s, want its inbound sidecar", peer)
			}
			// Through b's outbound sidecar, then its inbound sidecar: once each.
			if _, ok := m.b.WaitConnection("outbound", dst, 5*time.Second); !ok {
				t.Errorf("b's outbound sidecar did not see the call")
			}
			// Inbound from b itself (its outbound sidecar), not a's calls.
			fromSelf := func() (n int) {
				for _, l := range m.b.Connections("inbound", dst) {
					if strings.HasPrefix(l.Src, strings.TrimSuffix(dst, ":8080")+":") {
						n++
					}
				}
				return n
			}
			if _, ok := m.b.WaitLog(func(meshtest.LogLine) bool { return fromSelf() > 0 }, 5*time.Second); !ok {
				t.Fatal("b's inbound sidecar did not see the call")
			}
			time.Sleep(100 * time.Millisecond) // a looping call would show up as more lines
			if n := fromSelf(); n != 1 {
				t.Errorf("b's inbound sidecar saw the call %d times, want 1 (no loop, no skip)", n)
			}
		})
	}

	t.Run("app calls localhost uncaptured", func(t *testing.T) {
		peer, _, err := meshtest.Call(b, "127.0.0.1:8080", "lo")
		if err != nil {
			t.Fatal(err)
		}
		if peer != "127.0.0.1" {
			t.Errorf("peer = %s", peer)
		}
		if c := m.b.Connections("outbound", "127.0.0.1:8080"); len(c) != 0 {
			t.Errorf("localhost call captured: %+v", c)
		}
	})

	t.Run("sidecar's own connections not captured", func(t *testing.T) {
		// A process running as the proxy's UID in pod a calls pod b: it must
		// go straight out, not through a's outbound sidecar.
		dst := hostPort(b.IPv4, 7000)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/7000 && cat <&3`, b.IPv4)
		out, err := a.Command(ctx, testpod.ProxyUser, "bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("uid 1337 call: %v: %s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "127.0.0.6" {
			t.Errorf("server saw %q, want b's inbound sidecar", got)
		}
		if _, ok := m.b.WaitConnection("inbound", dst, 5*time.Second); !ok {
			t.Fatal("b's inbound sidecar did not see the call")
		}
		if c := m.a.Connections("outbound", dst); len(c) != 0 {
			t.Errorf("a's sidecar captured a connection of its own UID: %+v", c)
		}
	})

	t.Run("upstream that never answers: dial time-out, then reset", func(t *testing.T) {
		// No pod has this address: the SYN goes nowhere (ARP never resolves).
		dst := "198.18.0.250:8080"
		start := time.Now()
		_, _, err := meshtest.Call(a, dst, "anyone?")
		el := time.Since(start)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client error = %v, want a reset from the sidecar", err)
		}
		if el < dialTimeout || el > dialTimeout+time.Second {
			t.Errorf("client failed after %v, want about the dial time-out %v", el, dialTimeout)
		}
		_, logged := m.a.WaitLog(func(l meshtest.LogLine) bool {
			return l.Msg == "upstream connect failed" && strings.Contains(l.Error, "i/o timeout") && l.Dst == dst
		}, 5*time.Second)
		if !logged {
			t.Errorf("no dial time-out logged for %s:\n%s", dst, m.a.Proxy.Output())
		}
	})

	t.Run("connection to the sidecar's own port refused", func(t *testing.T) {
		_, _, err := meshtest.Call(a, hostPort(a.IPv4, 15001), "loop?")
		if err == nil {
			t.Fatal("a call to the sidecar's own listener went through")
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(m.a.Proxy.Output(), "proxy's own listener") {
			if time.Now().After(deadline) {
				t.Fatalf("no loop refusal logged:\n%s", m.a.Proxy.Output())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("fail closed when the sidecar is down", func(t *testing.T) {
		m.a.Proxy.Kill()
		start := time.Now()
		_, _, err := meshtest.Call(a, hostPort(b.IPv4, 8080), "x")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("call with a's sidecar down = %v, want connection refused", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("failure took %v, want at once", el)
		}
		// Pod c is excluded, so it still works: exclusions are not the sidecar's.
		if _, _, err := meshtest.Call(a, hostPort(m.c.IPv4, 8080), "x"); err != nil {
			t.Errorf("excluded destination failed with the sidecar down: %v", err)
		}
	})
}
