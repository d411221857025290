package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/pillionmesh/pillion/internal/jaegertest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// tracingMesh is an httpMesh whose sidecars export spans to a real Jaeger
// (a as web.shop, b as cart.shop), sampling nothing on their own, a's
// outbound chain making request IDs.
type tracingMesh struct {
	*httpMesh
	jaeger *jaegertest.Jaeger
	app    *meshtest.HTTPClient // a's application
}

func newTracingMesh(t *testing.T) *tracingMesh {
	t.Helper()
	j := jaegertest.Start(t)
	m := newHTTPMesh(t, "", "")
	// The sidecars reach Jaeger, on the test's loopback, through the
	// node's bridge address.
	collector := hostPort(m.node.BridgeV4(), 4317)
	l, err := m.node.Listen("tcp", collector)
	if err != nil {
		t.Fatal(err)
	}
	testpod.Forward(t, l, j.OTLP)
	tracing := func(service string) string {
		return fmt.Sprintf("tracing: {otlp: {endpoint: %q, timeout: 2s}, sampling: 0, serviceName: %s, flushInterval: 100ms}\n", collector, service)
	}
	// Tracing turned on by a reload, as an operator would.
	meshtest.UpdateConfig(t, m.configA, meshConfig+"outbound: {filters: [{requestid: {}}]}\n"+tracing("web.shop"))
	meshtest.UpdateConfig(t, m.configB, meshConfig+tracing("cart.shop"))
	for _, sc := range []*meshtest.Sidecar{m.a, m.b} {
		if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config reloaded" }, 10*time.Second); !ok {
			t.Fatalf("no reload:\n%s", sc.Proxy.Output())
		}
	}
	return &tracingMesh{httpMesh: m, jaeger: j, app: meshtest.NewHTTPClient(m.a.Pod, false)}
}

// echo sends GET /echo from a's app to b's with headers, wants 200 and
// returns the response and what b's app saw.
func (m *tracingMesh) echo(t *testing.T, header ...string) (*http.Response, appSaw) {
	t.Helper()
	res, body := podHTTP(t, m.app, "GET", "http://"+m.bAddr+"/echo", header...)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /echo: %s: %s", res.Status, body)
	}
	var saw appSaw
	decodeJSON(t, body, &saw)
	return res, saw
}

// spans returns the client span (a's) and the server span (b's) of tr,
// failing unless each service reported exactly one of its kind.
func spans(t *testing.T, tr jaegertest.Trace) (client, server jaegertest.Span) {
	t.Helper()
	var nc, ns int
	for _, s := range tr.Spans {
		switch svc, kind := tr.Service(s), s.Tag("span.kind"); {
		case svc == "web.shop" && kind == "client":
			client, nc = s, nc+1
		case svc == "cart.shop" && kind == "server":
			server, ns = s, ns+1
		}
	}
	if nc != 1 || ns != 1 {
		t.Fatalf("trace %s: %d client spans from web.shop, %d server spans from cart.shop, want one each: %+v", tr.TraceID, nc, ns, tr)
	}
	return client, server
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestTracingW3C: a caller with a span of its own (exported to the same
// Jaeger) sends a sampled traceparent through both sidecars; Jaeger holds
// one trace: caller → a's client span → b's server span, and the
// traceparent b's app got names b's server span as its parent. The spans
// carry the HTTP attributes, the caller's SPIFFE ID, the response flags,
// the request ID and the upstream service time the response header
// shows.
func TestTracingW3C(t *testing.T) {
	m := newTracingMesh(t)
	ctx := context.Background()
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(m.jaeger.OTLP), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("caller"))))
	defer func() { _ = tp.Shutdown(ctx) }()
	spanCtx, caller := tp.Tracer("e2e").Start(ctx, "checkout")
	h := http.Header{}
	propagation.TraceContext{}.Inject(spanCtx, propagation.HeaderCarrier(h))
	res, saw := m.echo(t, "Traceparent", h.Get("Traceparent"), "X-Request-Id", "rid-e2e-w3c", "User-Agent", "e2e-caller/1")
	caller.End()

	traceID, callerID := caller.SpanContext().TraceID().String(), caller.SpanContext().SpanID().String()
	tr := m.jaeger.WaitTrace(t, traceID, 3, 20*time.Second)
	client, server := spans(t, tr)
	if len(tr.Spans) != 3 {
		t.Errorf("trace holds %d spans, want 3 (caller, client, server)", len(tr.Spans))
	}
	if client.Parent() != callerID || server.Parent() != client.SpanID {
		t.Errorf("parents: client's %s (want the caller's %s), server's %s (want the client's %s)", client.Parent(), callerID, server.Parent(), client.SpanID)
	}
	if want := "00-" + traceID + "-" + server.SpanID + "-01"; saw.Header.Get("Traceparent") != want {
		t.Errorf("the app saw traceparent %q, want %q (b's server span)", saw.Header.Get("Traceparent"), want)
	}
	ust := res.Header.Get("X-Envoy-Upstream-Service-Time")
	if _, err := strconv.Atoi(ust); err != nil {
		t.Fatalf("x-envoy-upstream-service-time %q", ust)
	}
	aID, bAddr := meshtest.PodID(m.a.Pod), m.bAddr
	for _, c := range []struct {
		span jaegertest.Span
		want map[string]string
	}{
		{client, map[string]string{
			"http.request.method": "GET", "url.path": "/echo", "http.response.status_code": "200",
			"server.address": m.bIP, "server.port": "8080", "network.protocol.version": "1.1",
			"user_agent.original": "e2e-caller/1", "guid:x-request-id": "rid-e2e-w3c", "response_flags": "-",
			"upstream_service_time_ms": ust, "pillion.direction": "outbound", "network.peer.address": m.bIP,
			"client.address": m.a.Pod.IPv4.String(),
		}},
		{server, map[string]string{
			"http.request.method": "GET", "url.path": "/echo", "http.response.status_code": "200",
			"server.address": m.bIP, "guid:x-request-id": "rid-e2e-w3c", "response_flags": "-",
			"pillion.peer.spiffe_id": aID, "pillion.direction": "inbound", "user_agent.original": "e2e-caller/1",
		}},
	} {
		for k, want := range c.want {
			if got := c.span.Tag(k); got != want {
				t.Errorf("%s span %s: %s = %q, want %q", c.span.Tag("span.kind"), c.span.SpanID, k, got, want)
			}
		}
	}
	if client.OperationName != bAddr+"/*" {
		t.Errorf("client span named %q, want %q", client.OperationName, bAddr+"/*")
	}
}

// TestTracingB3: B3 in, B3 out. A caller's multi-header B3 context reaches
// b's app as multi-header B3 naming b's server span (its parent a's client
// span); a single b3 header comes out single. The request ID a's sidecar
// made is on both spans and reached the app.
func TestTracingB3(t *testing.T) {
	m := newTracingMesh(t)

	traceID, callerID := randomHex(t, 16), randomHex(t, 8)
	_, saw := m.echo(t, "X-B3-TraceId", traceID, "X-B3-SpanId", callerID, "X-B3-Sampled", "1")
	tr := m.jaeger.WaitTrace(t, traceID, 2, 20*time.Second)
	client, server := spans(t, tr)
	if client.Parent() != callerID || server.Parent() != client.SpanID {
		t.Errorf("parents: client's %s (want the caller's %s), server's %s (want the client's %s)", client.Parent(), callerID, server.Parent(), client.SpanID)
	}
	for k, want := range map[string]string{
		"X-B3-Traceid": traceID, "X-B3-Spanid": server.SpanID, "X-B3-Parentspanid": client.SpanID, "X-B3-Sampled": "1",
		"Traceparent": "00-" + traceID + "-" + server.SpanID + "-01",
	} {
		if got := saw.Header.Get(k); got != want {
			t.Errorf("the app saw %s: %q, want %q", k, got, want)
		}
	}
	if saw.Header.Get("B3") != "" {
		t.Errorf("the app saw a single b3 header %q: the caller sent multi only", saw.Header.Get("B3"))
	}
	rid := saw.Header.Get("X-Request-Id")
	if rid == "" || client.Tag("guid:x-request-id") != rid || server.Tag("guid:x-request-id") != rid {
		t.Errorf("request ID: app %q, client span %q, server span %q; want the one a's sidecar made on all three", rid, client.Tag("guid:x-request-id"), server.Tag("guid:x-request-id"))
	}

	traceID, callerID = randomHex(t, 16), randomHex(t, 8)
	_, saw = m.echo(t, "B3", traceID+"-"+callerID+"-1")
	tr = m.jaeger.WaitTrace(t, traceID, 2, 20*time.Second)
	client, server = spans(t, tr)
	if want := traceID + "-" + server.SpanID + "-1-" + client.SpanID; saw.Header.Get("B3") != want || client.Parent() != callerID {
		t.Errorf("the app saw b3 %q, want %q; client's parent %s, want %s", saw.Header.Get("B3"), want, client.Parent(), callerID)
	}
	if saw.Header.Get("X-B3-Traceid") != "" {
		t.Errorf("the app saw multi-header B3 %q: the caller sent single only", saw.Header.Get("X-B3-Traceid"))
	}
}

// TestTracingUnsampledAndCollectorDown: a request whose caller said "not
// sampled", and one with no context at sampling 0, export no span (their
// context still reaches the app); x-client-trace-id forces a trace. With
// Jaeger gone, requests still answer 200 at once and the spans are counted
// as dropped.
func TestTracingUnsampledAndCollectorDown(t *testing.T) {
	m := newTracingMesh(t)

	unsampled := randomHex(t, 16)
	_, saw := m.echo(t, "Traceparent", "00-"+unsampled+"-"+randomHex(t, 8)+"-00")
	if tp := saw.Header.Get("Traceparent"); !strings.HasPrefix(tp, "00-"+unsampled+"-") || !strings.HasSuffix(tp, "-00") {
		t.Errorf("the app saw traceparent %q, want trace %s, not sampled", tp, unsampled)
	}
	_, saw = m.echo(t)
	root := strings.Split(saw.Header.Get("Traceparent"), "-")
	if len(root) != 4 || root[3] != "00" {
		t.Fatalf("the app saw traceparent %q for a request without one: want a new, unsampled context", saw.Header.Get("Traceparent"))
	}
	// A forced trace after them: once it is in Jaeger, so would they be.
	_, saw = m.echo(t, "X-Client-Trace-Id", "forced-1")
	forced := strings.Split(saw.Header.Get("Traceparent"), "-")
	if len(forced) != 4 || forced[3] != "01" {
		t.Fatalf("x-client-trace-id: the app saw traceparent %q, want sampled", saw.Header.Get("Traceparent"))
	}
	m.jaeger.WaitTrace(t, forced[1], 2, 20*time.Second)
	time.Sleep(500 * time.Millisecond) // a few more flush intervals
	for _, id := range []string{unsampled, root[1]} {
		if tr, found, err := m.jaeger.Get(id); err != nil || found {
			t.Errorf("trace %s of an unsampled request is in Jaeger (%v): %+v", id, err, tr)
		}
	}
	adminA := meshtest.NewHTTPClient(m.a.Pod, false)
	if got := tracingStat(t, adminA, "pillion_tracing_spans_exported_total"); got < 1 {
		t.Errorf("a exported %d spans, want at least 1", got)
	}

	m.jaeger.Stop()
	const n = 10
	start := time.Now()
	for range n {
		m.echo(t, "X-Client-Trace-Id", "collector-down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("%d requests took %v with the collector down", n, d)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, c := range []*meshtest.HTTPClient{adminA, meshtest.NewHTTPClient(m.b.Pod, false)} {
		for {
			got := tracingStat(t, c, `pillion_tracing_spans_dropped_total{reason="export_failed"}`)
			if got >= n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("export_failed drops %d, want at least %d with Jaeger down", got, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// tracingStat reads one series from a sidecar's /stats.
func tracingStat(t *testing.T, c *meshtest.HTTPClient, series string) int {
	t.Helper()
	text := want200(t, c, "GET", adminURL+"/stats?filter=pillion_tracing")
	v, ok := statLines(t, text)[series]
	if !ok {
		t.Fatalf("/stats has no %s:\n%s", series, text)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: %q", series, v)
	}
	return n
}

// TestTracingDestinationService: behind discovery, the client sidecar's
// span names the destination Service (web.default), the endpoint that
// served the request and the SPIFFE ID discovery said it must present.
func TestTracingDestinationService(t *testing.T) {
	j := jaegertest.Start(t)
	m := newClusterMesh(t, []string{"web-0"}, nil, "")
	collector := hostPort(m.node.BridgeV4(), 4317)
	l, err := m.node.Listen("tcp", collector)
	if err != nil {
		t.Fatal(err)
	}
	testpod.Forward(t, l, j.OTLP)
	meshtest.UpdateConfig(t, m.clientCfg, fmt.Sprintf("tracing: {otlp: {endpoint: %q}, serviceName: client.default, flushInterval: 100ms}\n", collector))
	if _, ok := m.client.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config reloaded" }, 10*time.Second); !ok {
		t.Fatalf("no reload:\n%s", m.client.Proxy.Output())
	}
	traceID := randomHex(t, 16)
	req, err := http.NewRequest("GET", "http://"+hostPort(m.webIP, 80)+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Traceparent", "00-"+traceID+"-"+randomHex(t, 8)+"-01")
	res, err := m.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET web: %s", res.Status)
	}
	tr := j.WaitTrace(t, traceID, 1, 20*time.Second)
	var client *jaegertest.Span
	for i, s := range tr.Spans {
		if tr.Service(s) == "client.default" && s.Tag("span.kind") == "client" {
			client = &tr.Spans[i]
		}
	}
	if client == nil {
		t.Fatalf("no client span from client.default: %+v", tr)
	}
	web := m.webs["web-0"].pod
	for k, want := range map[string]string{
		"pillion.destination_service.name": "web", "pillion.destination_service.namespace": clusterNS,
		"pillion.peer.spiffe_id": meshtest.PodID(web), "network.peer.address": web.IPv4.String(),
		"server.address": m.webIP.String(), "http.response.status_code": "200",
	} {
		if got := client.Tag(k); got != want {
			t.Errorf("client span: %s = %q, want %q", k, got, want)
		}
	}
}
