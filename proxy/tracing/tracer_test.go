package tracing

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func testConfig(sampling float64) *Config {
	return &Config{Endpoint: "127.0.0.1:1", Timeout: time.Second, Sampling: sampling, ServiceName: "test",
		QueueSize: 16, BatchSize: 4, FlushInterval: time.Hour}
}

// serve runs one request with headers h through a Tracer's handler in
// direction dir, the chain answering with status after recording the
// upstream time; it returns the headers the chain saw and the spans
// exported.
func serve(t *testing.T, sampling float64, dir filters.Direction, h http.Header, status int) (http.Header, []tracetest.SpanStub, *Stats) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	stats := &Stats{}
	tr := newWithExporter(testConfig(sampling), exp, stats, zap.NewNop())
	var seen http.Header
	chain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := filters.FromContext(r.Context())
		info.SetEndpoint(upstream.Endpoint{Addr: netip.MustParseAddrPort("198.18.0.2:8080"), Meshed: true,
			Identity: "spiffe://cluster.local/ns/shop/sa/cart", Service: upstream.Service{Name: "cart", Namespace: "shop"}})
		info.SetUpstreamTime(42 * time.Millisecond)
		if status == http.StatusServiceUnavailable {
			info.AddFlags(filters.UpstreamConnectFailure)
		}
		r.Header.Set("X-Request-Id", "rid-1") // as the requestid filter does
		seen = r.Header.Clone()
		w.WriteHeader(status)
	})
	req := httptest.NewRequest(http.MethodGet, "http://cart.shop:8080/items?x=1", nil)
	req.Header = h
	req.Header.Set("User-Agent", "curl/8")
	info := &filters.Info{Direction: dir, Start: time.Now(), Source: netip.MustParseAddrPort("198.18.0.1:40000"),
		Destination: netip.MustParseAddrPort("198.18.0.2:8080")}
	if dir == filters.Inbound {
		info.Peer = "spiffe://cluster.local/ns/shop/sa/web"
	}
	req = req.WithContext(filters.NewContext(req.Context(), info))
	rec := httptest.NewRecorder()
	tr.Handler(chain).ServeHTTP(filters.Observe(rec), req)
	if err := tr.provider.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans() // Shutdown empties the in-memory exporter
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	return seen, spans, stats
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestHandlerClientSpan(t *testing.T) {
	seen, spans, stats := serve(t, 0, filters.Outbound, http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-01"}}, http.StatusServiceUnavailable)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanKind != trace.SpanKindClient || s.Parent.SpanID().String() != sid || s.SpanContext.TraceID().String() != tid {
		t.Fatalf("span kind %v parent %v trace %v", s.SpanKind, s.Parent.SpanID(), s.SpanContext.TraceID())
	}
	if want := "00-" + tid + "-" + s.SpanContext.SpanID().String() + "-01"; seen.Get("Traceparent") != want {
		t.Errorf("upstream traceparent %q, want %q (the client span)", seen.Get("Traceparent"), want)
	}
	if s.Name != "cart.shop:8080/*" {
		t.Errorf("name %q", s.Name)
	}
	a := attrs(s)
	for k, want := range map[attribute.Key]string{
		"http.request.method": "GET", "url.path": "/items", "server.address": "cart.shop", "user_agent.original": "curl/8",
		"network.protocol.version": "1.1", "guid:x-request-id": "rid-1", "response_flags": "UF",
		"pillion.peer.spiffe_id": "spiffe://cluster.local/ns/shop/sa/cart", "pillion.destination_service.name": "cart",
		"pillion.destination_service.namespace": "shop", "pillion.direction": "outbound", "network.peer.address": "198.18.0.2",
	} {
		if got := a[k].AsString(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for k, want := range map[attribute.Key]int64{"http.response.status_code": 503, "upstream_service_time_ms": 42, "server.port": 8080} {
		if got := a[k].AsInt64(); got != want {
			t.Errorf("%s = %d, want %d", k, got, want)
		}
	}
	if s.Status.Code != codes.Error {
		t.Errorf("status %v, want Error for a 503", s.Status)
	}
	if stats.Exported.Load() != 1 {
		t.Errorf("exported %d, want 1", stats.Exported.Load())
	}
}

func TestHandlerServerSpanB3(t *testing.T) {
	seen, spans, _ := serve(t, 0, filters.Inbound, http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"1"}}, http.StatusOK)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanKind != trace.SpanKindServer || s.Parent.SpanID().String() != sid || s.Status.Code == codes.Error {
		t.Fatalf("span kind %v parent %v status %v", s.SpanKind, s.Parent.SpanID(), s.Status)
	}
	id := s.SpanContext.SpanID().String()
	if seen.Get("X-B3-Spanid") != id || seen.Get("X-B3-Traceid") != tid || seen.Get("X-B3-Parentspanid") != sid || seen.Get("X-B3-Sampled") != "1" {
		t.Errorf("B3 to the app %v, want span %s of trace %s, parent %s", seen, id, tid, sid)
	}
	if !strings.Contains(seen.Get("Traceparent"), id) {
		t.Errorf("traceparent %q does not carry the server span %s", seen.Get("Traceparent"), id)
	}
	if got := attrs(s)["pillion.peer.spiffe_id"].AsString(); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("peer %q, want the caller's", got)
	}
}

func TestHandlerSampling(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sampling float64
		h        http.Header
		want     int
	}{
		{"unsampled parent", 1, http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-00"}}, 0},
		{"sampled parent, ratio 0", 0, http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-01"}}, 1},
		{"root, ratio 0", 0, http.Header{}, 0},
		{"root, ratio 1", 1, http.Header{}, 1},
		{"x-client-trace-id, ratio 0", 0, http.Header{"X-Client-Trace-Id": {"x"}}, 1},
		{"x-client-trace-id beats an unsampled parent", 0, http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-00"}, "X-Client-Trace-Id": {"x"}}, 1},
		{"b3 deferred, ratio 0", 0, http.Header{"B3": {tid + "-" + sid}}, 0},
		{"b3 deferred, ratio 1", 1, http.Header{"B3": {tid + "-" + sid}}, 1},
		{"b3 debug, ratio 0", 0, http.Header{"B3": {tid + "-" + sid + "-d"}}, 1},
		{"b3 deny, ratio 1", 1, http.Header{"B3": {"0"}}, 0},
		{"b3 multi unsampled, ratio 1", 1, http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"0"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen, spans, _ := serve(t, tc.sampling, filters.Outbound, tc.h, http.StatusOK)
			if len(spans) != tc.want {
				t.Fatalf("%d spans exported, want %d", len(spans), tc.want)
			}
			// Sampled or not, the upstream gets a context to continue.
			if seen.Get("Traceparent") == "" {
				t.Error("no traceparent forwarded")
			}
		})
	}
}

// blocking is an exporter that fails every export after blocking until
// release is closed.
type blocking struct{ release chan struct{} }

func (b blocking) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return errors.New("collector unreachable")
}
func (blocking) Shutdown(context.Context) error { return nil }

// TestQueueFullDrops: with the exporter stuck, requests never wait; spans
// past the queue are dropped and counted, and the ones in a failed batch
// are counted too.
func TestQueueFullDrops(t *testing.T) {
	exp := blocking{release: make(chan struct{})}
	stats := &Stats{}
	cfg := testConfig(1)
	cfg.QueueSize, cfg.BatchSize = 4, 1
	tr := newWithExporter(cfg, exp, stats, zap.NewNop())
	h := tr.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	start := time.Now()
	const n int64 = 50
	for range n {
		req := httptest.NewRequest(http.MethodGet, "http://a/", nil)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("%d requests took %v: the export queue made them wait", n, d)
	}
	close(exp.release)
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	full, failed := stats.QueueFull.Load(), stats.ExportFailed.Load()
	if full < n-int64(cfg.QueueSize)-1 || full+failed != n || stats.Exported.Load() != 0 {
		t.Errorf("queue_full %d, export_failed %d, exported %d; want at least %d queue_full and %d in all", full, failed, stats.Exported.Load(), n-int64(cfg.QueueSize)-1, n)
	}
}
