package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/sniff"
	"github.com/pillionmesh/pillion/sidecar"
)

// bannerServer is a server-first application: it greets each connection
// before reading anything.
func bannerServer(t *testing.T) netip.AddrPort {
	t.Helper()
	return loopbackServer(t, func(c net.Conn) {
		_, _ = io.WriteString(c, "220 pillion-test ESMTP\r\n")
		_, _ = io.Copy(io.Discard, c)
	})
}

// readBanner connects to the proxy and reads the greeting without sending.
func readBanner(t *testing.T, port uint16, within time.Duration) (string, error) {
	t.Helper()
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(within))
	return bufio.NewReader(c).ReadString('\n')
}

func TestServerFirstProtocolAfterSniffTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SniffTimeout = 150 * time.Millisecond
	cfg.OpaquePorts = sidecar.PortSet{}
	s := testServer(t, cfg, fixed(bannerServer(t)))
	line, err := readBanner(t, s.cfg.OutboundPort, 5*time.Second)
	if err != nil || line != "220 pillion-test ESMTP\r\n" {
		t.Fatalf("banner = %q, %v", line, err)
	}
	st := &s.Stats().Dir[Outbound]
	if n := st.SniffTimeouts.Load(); n != 1 {
		t.Errorf("sniff time-outs = %d, want 1", n)
	}
	if n := st.Detected[sniff.Opaque].Load(); n != 1 {
		t.Errorf("detected opaque = %d, want 1", n)
	}
}

func TestOpaquePortSkipsDetection(t *testing.T) {
	backend := bannerServer(t)
	cfg := DefaultConfig()
	// Were detection to run, the banner would wait for this time-out.
	cfg.SniffTimeout = time.Minute
	cfg.OpaquePorts = sidecar.PortSet{Ports: []uint16{backend.Port()}}
	s := testServer(t, cfg, fixed(backend))
	line, err := readBanner(t, s.cfg.OutboundPort, 5*time.Second)
	if err != nil || line != "220 pillion-test ESMTP\r\n" {
		t.Fatalf("banner on an opaque port = %q, %v; want it at once", line, err)
	}
	if n := s.Stats().Dir[Outbound].SniffTimeouts.Load(); n != 0 {
		t.Errorf("sniff time-outs = %d, want 0", n)
	}
}

func TestHTTP1DetectedAndServedAsHTTP(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SniffTimeout = time.Minute // a decision must come from the bytes
	s := testServer(t, cfg, fixed(httpBackend(t)))
	req := "GET /path?q=1 HTTP/1.1\r\nHost: b:8080\r\nConnection: close\r\n\r\n"
	// Written raw, to count the bytes; not half-closed, since net/http
	// takes a client's EOF for its going away.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.cfg.OutboundPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("not an HTTP response: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(body) != "GET /path?q=1 host=b:8080 proto=HTTP/1.1" {
		t.Errorf("response = %d %q, want 200 and the request as the backend saw it", res.StatusCode, body)
	}
	if res.Header.Get("X-Envoy-Upstream-Service-Time") == "" {
		t.Errorf("no upstream service time header in %v", res.Header)
	}
	st := &s.Stats().Dir[Outbound]
	waitFor(t, "completed", func() bool { return st.Completed.Load() == 1 })
	if n := st.Detected[sniff.HTTP1].Load(); n != 1 {
		t.Errorf("detected http/1 = %d, want 1 (snapshot %+v)", n, st.Load())
	}
	if n := st.BytesSent.Load(); n != int64(len(req)) {
		t.Errorf("bytes sent = %d, want %d (peeked bytes counted once)", n, len(req))
	}
}

func TestOwnListenerOnPodAddressIsALoop(t *testing.T) {
	cfg := DefaultConfig()
	d := &detector{ // alone: only the check
		cfg: &cfg,
		localAddrs: func() ([]net.Addr, error) {
			return []net.Addr{&net.IPNet{IP: net.ParseIP("198.18.0.3"), Mask: net.CIDRMask(24, 32)}}, nil
		},
		log: zap.NewNop(),
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
		if got := d.isOwnListener(netip.MustParseAddrPort(tt.dst)); got != tt.want {
			t.Errorf("isOwnListener(%s) = %v, want %v", tt.dst, got, tt.want)
		}
	}
}
