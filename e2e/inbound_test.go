package e2e

import (
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// TestInboundPodIP: b's sidecar delivers what comes through the mesh to
// b's application at b's own address, from 127.0.0.6 (::6). A listener
// bound to localhost only stays private to the pod: from a, through both
// sidecars in mTLS, it is refused (reset, counted by b's sidecar), while
// b's own processes still reach it. Listeners bound to the pod IP only, to
// 0.0.0.0 and to [::] are reached, and see the connection come from
// 127.0.0.6 (::6).
func TestInboundPodIP(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	b := m.b.Pod
	for _, addr := range []string{
		"127.0.0.1:7777", "[::1]:7777", // a debug port: localhost only
		hostPort(b.IPv4, 7778), hostPort(b.IPv6, 7778), // the pod IP only
		"0.0.0.0:7779", "[::]:7780",
	} {
		meshtest.ServeEcho(t, b, addr)
	}
	adminB := meshtest.NewHTTPClient(b, false)
	inboundFailures := func(want string) {
		t.Helper()
		waitStats(t, adminB, "pillion_upstream_connect_failures_total", map[string]string{
			`pillion_upstream_connect_failures_total{direction="inbound"}`:  want,
			`pillion_upstream_connect_failures_total{direction="outbound"}`: "0",
		})
	}
	inboundFailures("0")

	for _, tc := range []struct {
		name string
		dst  string
		from string // the source the application saw
	}{
		{"pod IP only", hostPort(b.IPv4, 7778), "127.0.0.6"},
		{"pod IPv6 only", hostPort(b.IPv6, 7778), "::6"},
		{"0.0.0.0", hostPort(b.IPv4, 7779), "127.0.0.6"},
		{"[::] over IPv4", hostPort(b.IPv4, 7780), "127.0.0.6"},
		{"[::] over IPv6", hostPort(b.IPv6, 7780), "::6"},
	} {
		t.Run("reached/"+tc.name, func(t *testing.T) {
			peer, echoed, err := meshtest.Call(m.a.Pod, tc.dst, "hello "+tc.name)
			if err != nil || echoed != "hello "+tc.name {
				t.Fatalf("call to %s: %q, %v", tc.dst, echoed, err)
			}
			if peer != tc.from {
				t.Errorf("the application at %s saw the connection come from %s, want %s", tc.dst, peer, tc.from)
			}
			in, ok := m.b.WaitConnection("inbound", tc.dst, 5*time.Second)
			if !ok || in.Upstream != tc.dst || in.Peer != meshtest.PodID(m.a.Pod) {
				t.Errorf("b's inbound line: %+v (found %v); want it delivered to %s, from a over mTLS", in, ok, tc.dst)
			}
		})
	}
	inboundFailures("0")

	// The localhost-only listeners, asked for at the pod IP: refused by
	// the application's kernel, so b's sidecar resets the mTLS stream and
	// a's resets a's application.
	for i, dst := range []string{hostPort(b.IPv4, 7777), hostPort(b.IPv6, 7777)} {
		_, echoed, err := meshtest.Call(m.a.Pod, dst, "secret?")
		if !errors.Is(err, syscall.ECONNRESET) || echoed != "" {
			t.Errorf("call to %s, where only localhost listens: %q, %v; want a reset", dst, echoed, err)
		}
		inboundFailures(strconv.Itoa(i + 1))
	}
	// HTTP, say a pprof port: b's sidecar answers 503 UF itself.
	res, body := podHTTP(t, meshtest.NewHTTPClient(m.a.Pod, false), "GET", "http://"+hostPort(b.IPv4, 7777)+"/debug/pprof/")
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Pillion-Response-Flags") != "UF" {
		t.Errorf("HTTP to b's localhost-only port: %s, flags %q, want 503 UF:\n%s", res.Status, res.Header.Get("Pillion-Response-Flags"), body)
	}
	waitStats(t, adminB, "pillion_requests_total", map[string]string{
		`pillion_requests_total{code="503",destination_service_name="",destination_service_namespace="",direction="inbound",flags="UF",peer="` +
			meshtest.PodID(m.a.Pod) + `"}`: "1",
	})

	// The control: inside b the listeners are alive, on localhost.
	for _, addr := range []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:7777"), netip.MustParseAddrPort("[::1]:7777")} {
		if peer, echoed, err := meshtest.Call(b, addr.String(), "local"); err != nil || echoed != "local" || peer != addr.Addr().String() {
			t.Errorf("b's own call to %s: %q from %s, %v; want the echo, from itself", addr, echoed, peer, err)
		}
	}
}
