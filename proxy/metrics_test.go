package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
)

// series returns the series of the metric family name in reg, keyed by
// their labels ({a="1",b="2"}, in name order): a counter's or gauge's
// value, a histogram's sample count. None is an empty map.
func series(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			out["{"+strings.Join(ls, ",")+"}"] = value(mf.GetType(), m)
		}
	}
	return out
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return -1
}

// wantSeries fails t unless reg's series of name are exactly want.
func wantSeries(t *testing.T, reg prometheus.Gatherer, name string, want map[string]float64) {
	t.Helper()
	if diff := cmp.Diff(want, series(t, reg, name)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

// metricsServer is testServer with metrics registered on a fresh registry.
func metricsServer(t *testing.T, cfg Config, origDst func(*net.TCPConn) (netip.AddrPort, error)) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	cfg.Registerer = reg
	s := testServer(t, cfg, origDst)
	t.Cleanup(func() {
		problems, err := testutil.GatherAndLint(reg)
		// Istio's names are a contract, milliseconds and all.
		problems = slices.DeleteFunc(problems, func(p promlint.Problem) bool { return strings.HasPrefix(p.Metric, "istio_") })
		if err != nil || len(problems) > 0 {
			t.Errorf("metrics lint: %v %+v", err, problems)
		}
		noGlobalMetrics(t)
	})
	return s, reg
}

// noGlobalMetrics fails t if any pillion metric reached the global
// registry.
func noGlobalMetrics(t *testing.T) {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "pillion_") {
			t.Errorf("%s is in the global registry", mf.GetName())
		}
	}
}

// switchable is an original destination the test changes between
// connections.
func switchable(first netip.AddrPort) (*atomic.Pointer[netip.AddrPort], func(*net.TCPConn) (netip.AddrPort, error)) {
	p := new(atomic.Pointer[netip.AddrPort])
	p.Store(&first)
	return p, func(*net.TCPConn) (netip.AddrPort, error) { return *p.Load(), nil }
}

func deadAddr(t *testing.T) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))
}

// TestRequestMetrics: 3 requests the upstream answers 200 and 2 the proxy
// answers 503 UF (upstream down) give exactly those counts, 5 request
// latencies and 3 upstream ones.
func TestRequestMetrics(t *testing.T) {
	dst, origDst := switchable(httpBackend(t))
	s, reg := metricsServer(t, DefaultConfig(), origDst)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // origDst is read per connection
	url := fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort)
	for range 3 {
		if res, body := get(t, c, url, nil); res.StatusCode != 200 {
			t.Fatalf("got %d %q, want 200", res.StatusCode, body)
		}
	}
	dead := deadAddr(t)
	dst.Store(&dead)
	for range 2 {
		if res, body := get(t, c, url, nil); res.StatusCode != 503 {
			t.Fatalf("got %d %q, want 503", res.StatusCode, body)
		}
	}
	// Recorded when the handler returns, just after the client has it all.
	waitFor(t, "5 requests recorded", func() bool {
		return series(t, reg, "pillion_request_duration_seconds")[`{direction="outbound"}`] == 5
	})
	wantSeries(t, reg, "pillion_requests_total", map[string]float64{
		`{code="200",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""}`:  3,
		`{code="503",destination_service_name="",destination_service_namespace="",direction="outbound",flags="UF",peer=""}`: 2,
	})
	wantSeries(t, reg, "pillion_request_duration_seconds", map[string]float64{
		`{direction="outbound"}`: 5,
		`{direction="inbound"}`:  0,
	})
	wantSeries(t, reg, "pillion_upstream_duration_seconds", map[string]float64{
		`{direction="outbound"}`: 3,
		`{direction="inbound"}`:  0,
	})
	// Each request came on its own connection.
	wantSeries(t, reg, "pillion_protocol_detected_total", map[string]float64{
		`{direction="outbound",protocol="opaque"}`: 0,
		`{direction="outbound",protocol="http/1"}`: 5,
		`{direction="outbound",protocol="h2c"}`:    0,
		`{direction="outbound",protocol="tls"}`:    0,
		`{direction="inbound",protocol="opaque"}`:  0,
		`{direction="inbound",protocol="http/1"}`:  0,
		`{direction="inbound",protocol="h2c"}`:     0,
		`{direction="inbound",protocol="tls"}`:     0,
	})
}

// TestConnectionMetrics: opaque connections with known byte counts, a
// loop and an upstream that refuses.
func TestConnectionMetrics(t *testing.T) {
	dst, origDst := switchable(echoServer(t))
	s, reg := metricsServer(t, DefaultConfig(), origDst)
	for _, msg := range []string{"one", "three", "seven"} { // 13 bytes sent, 13+3×5 received
		if got, err := roundTrip(t, s.cfg.OutboundPort, msg); err != nil || got != "echo:"+msg {
			t.Fatalf("round trip %q = %q, %v", msg, got, err)
		}
	}
	waitFor(t, "3 connections closed", func() bool {
		return series(t, reg, "pillion_connections_closed_total")[`{direction="outbound"}`] == 3
	})
	loop := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.cfg.OutboundPort)
	dst.Store(&loop)
	_, _ = roundTrip(t, s.cfg.OutboundPort, "x")
	dead := deadAddr(t)
	dst.Store(&dead)
	_, _ = roundTrip(t, s.cfg.OutboundPort, "x")
	waitFor(t, "the failed connect counted", func() bool {
		return series(t, reg, "pillion_upstream_connect_failures_total")[`{direction="outbound"}`] == 1
	})

	both := func(out, in float64) map[string]float64 {
		return map[string]float64{`{direction="outbound"}`: out, `{direction="inbound"}`: in}
	}
	wantSeries(t, reg, "pillion_connections_total", both(5, 0))
	wantSeries(t, reg, "pillion_connections_active", both(0, 0))
	wantSeries(t, reg, "pillion_connections_closed_total", both(3, 0))
	wantSeries(t, reg, "pillion_bytes_sent_total", both(13, 0))
	wantSeries(t, reg, "pillion_bytes_received_total", both(28, 0))
	wantSeries(t, reg, "pillion_upstream_connect_failures_total", both(1, 0))
	wantSeries(t, reg, "pillion_sniff_timeouts_total", both(0, 0))
	wantSeries(t, reg, "pillion_connections_refused_total", map[string]float64{
		`{direction="outbound",reason="over_limit"}`:      0,
		`{direction="outbound",reason="loop"}`:            1,
		`{direction="outbound",reason="no_original_dst"}`: 0,
		`{direction="inbound",reason="over_limit"}`:       0,
		`{direction="inbound",reason="loop"}`:             0,
		`{direction="inbound",reason="no_original_dst"}`:  0,
		`{direction="inbound",reason="plaintext"}`:        0,
	})
	if got := series(t, reg, "pillion_protocol_detected_total")[`{direction="outbound",protocol="opaque"}`]; got != 4 {
		t.Errorf("opaque connections detected = %v, want 4 (the loop is refused before detection)", got)
	}
	// Without an identity, no SVID expiry.
	wantSeries(t, reg, "pillion_svid_expiry_timestamp_seconds", map[string]float64{})

	// A connection being proxied is active.
	dst.Store(new(echoServer(t)))
	hold, err := net.Dial("tcp", loop.String())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	if _, err := hold.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an active connection", func() bool {
		return series(t, reg, "pillion_connections_active")[`{direction="outbound"}`] == 1
	})
}

// TestPoolMetrics: the pooled connection of a keep-alive request shows in
// pillion_pool_connections until it is closed.
func TestPoolMetrics(t *testing.T) {
	backend := httpBackend(t)
	s, reg := metricsServer(t, DefaultConfig(), fixed(backend))
	get(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort), nil)
	wantSeries(t, reg, "pillion_pool_connections", map[string]float64{
		fmt.Sprintf(`{endpoint="%s",protocol="http/1.1"}`, backend): 1,
	})
	waitFor(t, "the pooled connection closed", func() bool {
		s.closeIdlePools()
		return len(series(t, reg, "pillion_pool_connections")) == 0
	})
}

// TestInboundMTLSMetrics: an HTTP request from a peer sidecar is counted
// with its SPIFFE ID, the mTLS connection, a refused peer of another trust
// domain, and the SVID's expiry.
func TestInboundMTLSMetrics(t *testing.T) {
	backend := httpBackend(t)
	ca := svidtest.CA(t, "", "cluster.local")
	other := svidtest.CA(t, "", "other.org")
	own := svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/b/sa/b")
	cfg := DefaultConfig()
	cfg.Identity = readyIdentity{own}
	s, reg := metricsServer(t, cfg, fixed(backend))

	peer := svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/a/sa/a")
	if code, err := mtlsGet(t, s.cfg.InboundPort, peer); err != nil || code != 200 {
		t.Fatalf("GET from a peer sidecar: %d, %v; want 200", code, err)
	}
	// It trusts us; we do not trust it.
	stranger := svidtest.Source{SVID: svidtest.Issue(t, other, "spiffe://other.org/ns/a/sa/a"), Bundles: x509bundle.NewSet(ca.Bundle(), other.Bundle())}
	if _, err := mtlsGet(t, s.cfg.InboundPort, stranger); err == nil {
		t.Error("a peer of another trust domain was served")
	}
	waitFor(t, "the request and the refusal counted", func() bool {
		return series(t, reg, "pillion_request_duration_seconds")[`{direction="inbound"}`] == 1 &&
			series(t, reg, "pillion_tls_handshake_failures_total")[`{direction="inbound",reason="other_trust_domain"}`] == 1
	})
	wantSeries(t, reg, "pillion_requests_total", map[string]float64{
		`{code="200",destination_service_name="",destination_service_namespace="",direction="inbound",flags="-",peer="spiffe://cluster.local/ns/a/sa/a"}`: 1,
	})
	wantSeries(t, reg, "pillion_mtls_connections_total", map[string]float64{
		`{direction="outbound"}`: 0, `{direction="inbound"}`: 1,
	})
	failures := map[string]float64{} // every reason in both directions
	for _, d := range []Direction{Outbound, Inbound} {
		for f := range mtls.NumFailures {
			failures[fmt.Sprintf("{direction=%q,reason=%q}", d, mtls.Failure(f))] = 0
		}
	}
	failures[`{direction="inbound",reason="other_trust_domain"}`] = 1
	wantSeries(t, reg, "pillion_tls_handshake_failures_total", failures)
	wantSeries(t, reg, "pillion_plaintext_connections_total", map[string]float64{`{}`: 0})
	wantSeries(t, reg, "pillion_authz_denied_connections_total", map[string]float64{`{}`: 0})
	wantSeries(t, reg, "pillion_svid_expiry_timestamp_seconds", map[string]float64{
		`{}`: float64(own.SVID.Certificates[0].NotAfter.Unix()),
	})
}

// mtlsGet sends GET / to the inbound port as a peer sidecar with src's
// SVID, over HTTP/1.1 in mTLS, and returns the status code.
func mtlsGet(t *testing.T, port uint16, src svidtest.Source) (int, error) {
	t.Helper()
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tc := tls.Client(c, mtls.ClientConfig(src, mtls.AuthorizeMemberOf(td), mtls.ProtoHTTP1))
	if _, err := tc.Write([]byte("GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")); err != nil {
		return 0, err
	}
	res, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// TestMetricsOff: without a Registerer the proxy records nothing and
// serves as before, and nothing goes to the global registry.
func TestMetricsOff(t *testing.T) {
	s := testServer(t, DefaultConfig(), fixed(httpBackend(t)))
	if s.metrics != nil {
		t.Fatal("request metrics built without a Registerer")
	}
	if res, _ := get(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort), nil); res.StatusCode != 200 {
		t.Errorf("status %d, want 200", res.StatusCode)
	}
	noGlobalMetrics(t)
}

// TestMetricsRegisteredOnce: a second server on the same registry is an
// error, and leaves the first one's metrics as they were.
func TestMetricsRegisteredOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Registerer = reg
	if _, err := New(cfg, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	before, err := testutil.GatherAndCount(reg)
	if err != nil || before == 0 {
		t.Fatalf("%d series registered (%v)", before, err)
	}
	_, err = New(cfg, zap.NewNop())
	if want := "proxy: metrics: duplicate metrics collector registration attempted"; err == nil || err.Error() != want {
		t.Errorf("second New: %v, want %s", err, want)
	}
	if !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		t.Errorf("second New: %v, want an AlreadyRegisteredError", err)
	}
	if after, _ := testutil.GatherAndCount(reg); after != before {
		t.Errorf("%d series after the failed New, %d before", after, before)
	}
}

// TestRecordCode: the code label is the status sent; a handler that
// wrote nothing sent 200, one that panicked before writing sent nothing.
func TestRecordCode(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, cs := newRequestMetrics()
	for _, c := range cs {
		reg.MustRegister(c)
	}
	for _, tt := range []struct {
		status   int
		returned bool
	}{{0, true}, {0, false}, {404, true}, {101, true}, {999, true}, {200, true}} {
		m.record(&filters.Info{Direction: Inbound, Start: time.Now()}, sentStatus(tt.status, tt.returned))
	}
	key := func(code string) string {
		return fmt.Sprintf(`{code=%q,destination_service_name="",destination_service_namespace="",direction="inbound",flags="-",peer=""}`, code)
	}
	wantSeries(t, reg, "pillion_requests_total", map[string]float64{
		key("0"): 1, key("101"): 1, key("200"): 2, key("404"): 1, key("999"): 1,
	})
}

// TestRecordAllocations keeps recording a request on a known series free
// of allocations.
func TestRecordAllocations(t *testing.T) {
	m, _ := newRequestMetrics()
	info := &filters.Info{Direction: Outbound, Start: time.Now(), Peer: "spiffe://cluster.local/ns/a/sa/a"}
	info.SetUpstreamTime(time.Millisecond)
	m.record(info, 200)
	if n := testing.AllocsPerRun(100, func() { m.record(info, 200) }); n > 0 {
		t.Errorf("record allocates %v times per request", n)
	}
}

// TestUpgradeRecorded: with metrics on, an upgraded connection still
// works (the recording writer hijacks) and is counted as 101.
func TestUpgradeRecorded(t *testing.T) {
	backend := loopbackServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil || req.Header.Get("Upgrade") != "test" {
			return
		}
		_, _ = c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n"))
		_, _ = io.Copy(c, br) // echo
	})
	s, reg := metricsServer(t, DefaultConfig(), fixed(backend))
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.cfg.OutboundPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v; want 101", res, err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("after the upgrade: %q, %v; want the echo", got, err)
	}
	c.Close()
	waitFor(t, "the upgrade recorded", func() bool {
		return series(t, reg, "pillion_request_duration_seconds")[`{direction="outbound"}`] == 1
	})
	wantSeries(t, reg, "pillion_requests_total", map[string]float64{
		`{code="101",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""}`: 1,
	})
}
