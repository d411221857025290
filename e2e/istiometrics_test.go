package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// istioScrape reads a sidecar's :15090 from inside its pod and parses it
// with Prometheus' text parser: the istio_* series, counters by value,
// histograms as their _count, and as their _sum for the byte sizes.
func istioScrape(t *testing.T, pod *testpod.Pod) map[string]float64 {
	t.Helper()
	_, body := podHTTP(t, meshtest.NewHTTPClient(pod, false), "GET", "http://127.0.0.1:15090/stats/prometheus")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: parsing the scrape: %v", pod.Name, err)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "istio_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[seriesKey(name, l)] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[seriesKey(name+"_count", l)] = float64(m.GetHistogram().GetSampleCount())
				if strings.HasSuffix(name, "_bytes") && l["request_protocol"] == "http" {
					out[seriesKey(name+"_sum", l)] = m.GetHistogram().GetSampleSum()
				}
			default:
				t.Errorf("%s: %s is a %s", pod.Name, name, mf.GetType())
			}
		}
	}
	return out
}

// seriesKey names a series: name{k="v",...}, its labels sorted.
func seriesKey(name string, l map[string]string) string {
	var b strings.Builder
	b.WriteString(name + "{")
	for i, k := range slices.Sorted(maps.Keys(l)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, l[k])
	}
	return b.String() + "}"
}

// with returns a copy of l with kv (key, value, …) set.
func with(l map[string]string, kv ...string) map[string]string {
	out := maps.Clone(l)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// wantRequests adds to want the series of n requests with labels l: the
// count and the three histograms' counts, and for HTTP the byte sums
// (request bodies empty, responses of respBytes each).
func wantRequests(want map[string]float64, l map[string]string, n int, respBytes int) {
	want[seriesKey("istio_requests_total", l)] = float64(n)
	for _, h := range []string{"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
		want[seriesKey(h+"_count", l)] = float64(n)
	}
	if l["request_protocol"] == "http" {
		want[seriesKey("istio_request_bytes_sum", l)] = 0
		want[seriesKey("istio_response_bytes_sum", l)] = float64(n * respBytes)
	}
}

// wantTCP adds the series of one opaque connection that received nothing
// from its client and sent it sent bytes.
func wantTCP(want map[string]float64, l map[string]string, sent int) {
	want[seriesKey("istio_tcp_connections_opened_total", l)] = 1
	want[seriesKey("istio_tcp_connections_closed_total", l)] = 1
	want[seriesKey("istio_tcp_received_bytes_total", l)] = 0
	want[seriesKey("istio_tcp_sent_bytes_total", l)] = float64(sent)
}

// waitIstio waits until pod's istio_* series are exactly want.
func waitIstio(t *testing.T, pod *testpod.Pod, want map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := istioScrape(t, pod)
		diff := cmp.Diff(want, got)
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: istio_* series (-want +got):\n%s", pod.Name, diff)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpName connects from the client pod to the Service's opaque TCP port
// and reads what the server-first backend writes (its pod's name).
func (m *clusterMesh) tcpName(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.client.Pod.Dial(ctx, "tcp", hostPort(m.webIP, 7000))
	if err != nil {
		t.Fatalf("opaque TCP: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("opaque TCP: %v", err)
	}
	return string(b)
}

// TestIstioMetrics: a client and a web pod with sidecars, discovery on a
// real API server, the Service web in front (HTTP :80, gRPC :9090, opaque
// TCP :7000). Known traffic — HTTP 200 and the app's 503 through the
// Service, gRPC OK and an Unimplemented error, one opaque TCP stream, and
// a plaintext caller straight into web's sidecar — gives exactly those
// counts on every istio_* series of both sidecars, with Istio's label
// values, read from :15090 with Prometheus' text parser. Then a real
// Prometheus scrapes both sidecars under steady traffic and the Istio
// Service and Workload dashboards' queries (testdata, copied from Istio)
// return what the traffic was.
func TestIstioMetrics(t *testing.T) {
	m := newClusterMesh(t, []string{"web-0"}, nil, "")
	web := m.webs["web-0"]
	plain := m.node.AddPod(t, "plain") // no sidecar: a caller outside the mesh, and Prometheus' pod
	c := m.httpClient()
	get := func(n, wantCode int) {
		t.Helper()
		for range n {
			code, pod, err := m.get(c)
			if err != nil || code != wantCode || pod != "web-0" {
				t.Fatalf("GET web: %d from %q, %v; want %d from web-0\nthe client sidecar's log, last 40 lines:\n%s\ndiscovery's log, last 20 lines:\n%s",
					code, pod, err, wantCode, lastLines(m.client.Proxy.Output(), 40), lastLines(m.discovery.log(), 20))
			}
		}
	}
	get(4, 200)
	web.status.Store(503)
	get(2, 503)
	web.status.Store(0)

	conn, err := grpc.NewClient("passthrough:///"+hostPort(m.webIP, 9090),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return m.client.Pod.Dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := grpc_testing.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tc.UnaryCall(ctx, &grpc_testing.SimpleRequest{}); err != nil {
		t.Fatalf("gRPC UnaryCall: %v", err)
	}
	for range 2 {
		if _, err := tc.EmptyCall(ctx, &grpc_testing.Empty{}); status.Code(err) != codes.Unimplemented {
			t.Fatalf("gRPC EmptyCall: %v, want Unimplemented", err)
		}
	}
	if got := m.tcpName(t); got != "web-0" {
		t.Fatalf("opaque TCP read %q, want web-0", got)
	}
	plainClient := meshtest.NewHTTPClient(plain, false)
	for range 3 {
		if res, body := podHTTP(t, plainClient, "GET", "http://"+hostPort(web.pod.IPv4, 8080)+"/"); res.StatusCode != 200 || body != "web-0" {
			t.Fatalf("plaintext GET web-0: %s %q", res.Status, body)
		}
	}

	clientID, webID := m.issuer.ID(m.client.Pod), m.issuer.ID(web.pod)
	// reporter=source, on the client's sidecar: the client from its
	// flags, the destination from discovery (the Service, the endpoint's
	// workload named from its pod's owner and labels) and the mTLS peer.
	src := map[string]string{
		"reporter": "source", "source_workload": "client", "source_workload_namespace": "default", "source_principal": clientID,
		"source_app": "client", "source_version": "unknown", "source_canonical_service": "client", "source_canonical_revision": "latest",
		"source_cluster": "Kubernetes", "destination_workload": "web", "destination_workload_namespace": "default",
		"destination_principal": webID, "destination_app": "web", "destination_version": "unknown",
		"destination_service": "web.default.svc.cluster.local", "destination_service_name": "web", "destination_service_namespace": "default",
		"destination_canonical_service": "web", "destination_canonical_revision": "latest", "destination_cluster": "Kubernetes",
		"response_flags": "-", "connection_security_policy": "unknown",
	}
	// reporter=destination, on web's sidecar: web from its flags, the
	// caller from its SPIFFE ID, the Service as the client's sidecar said.
	dst := map[string]string{
		"reporter": "destination", "source_workload": "unknown", "source_workload_namespace": "default", "source_principal": clientID,
		"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "unknown", "source_canonical_revision": "latest",
		"source_cluster": "unknown", "destination_workload": "web", "destination_workload_namespace": "default",
		"destination_principal": webID, "destination_app": "web", "destination_version": "unknown",
		"destination_service": "web.default.svc.cluster.local", "destination_service_name": "web", "destination_service_namespace": "default",
		"destination_canonical_service": "web", "destination_canonical_revision": "latest", "destination_cluster": "Kubernetes",
		"response_flags": "-", "connection_security_policy": "mutual_tls",
	}
	// Of HTTP and gRPC, the client's sidecar also said its workload
	// (pillion-workload, Istio's metadata exchange); an opaque stream
	// carries nothing.
	dstHTTP := with(dst, "source_workload", "client", "source_app", "client", "source_canonical_service", "client",
		"source_cluster", "Kubernetes")
	// The plaintext caller: nothing known of it, and it named no Service.
	plainSrc := with(dst, "source_workload_namespace", "unknown", "source_principal", "unknown",
		"destination_principal", "unknown", "destination_service", "web", "destination_service_name", "web",
		"connection_security_policy", "none")
	for _, side := range []struct {
		pod          *testpod.Pod
		labels, http map[string]string
		plain        bool
	}{{m.client.Pod, src, src, false}, {web.pod, dst, dstHTTP, true}} {
		want := map[string]float64{}
		httpL := func(code string) map[string]string {
			return with(side.http, "request_protocol", "http", "response_code", code, "grpc_response_status", "")
		}
		grpcL := func(st string) map[string]string {
			return with(side.http, "request_protocol", "grpc", "response_code", "200", "grpc_response_status", st)
		}
		wantRequests(want, httpL("200"), 4, len("web-0"))
		wantRequests(want, httpL("503"), 2, len("web-0"))
		wantRequests(want, grpcL("0"), 1, 0)
		wantRequests(want, grpcL(strconv.Itoa(int(codes.Unimplemented))), 2, 0)
		tcp := with(side.labels, "request_protocol", "tcp")
		if side.plain {
			// An opaque stream carries no pillion-service: the inbound side
			// falls back to the app's name for the Service, as Istio's
			// without its cluster metadata.
			tcp = with(tcp, "destination_service", "web")
		}
		wantTCP(want, tcp, len("web-0"))
		if side.plain {
			wantRequests(want, with(plainSrc, "request_protocol", "http", "response_code", "200", "grpc_response_status", ""), 3, len("web-0"))
		}
		waitIstio(t, side.pod, want)
	}
	if t.Failed() {
		return
	}
	istioDashboards(t, m, plain)
}

// istioDashboards scrapes the sidecars of m with a real Prometheus in
// pod prom while steady traffic flows (HTTP 200 and opaque TCP through
// the Service), and evaluates the Istio dashboards' queries.
func istioDashboards(t *testing.T, m *clusterMesh, prom *testpod.Pod) {
	t.Helper()
	p := startPrometheus(t, prom, hostPort(m.client.Pod.IPv4, 15090), hostPort(m.webs["web-0"].pod.IPv4, 15090))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := m.httpClient()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if code, _, err := m.get(c); err != nil || code != 200 {
				t.Errorf("steady GET: %d, %v", code, err)
				return
			}
			if i%4 == 0 {
				if got := m.tcpName(t); got != "web-0" {
					t.Errorf("steady TCP read %q", got)
					return
				}
			}
		}
	}()
	defer func() { close(stop); <-done }()
	// irate needs two scrapes that both saw traffic move: let four pass.
	time.Sleep(500 * time.Millisecond)
	p.waitScrapes(t, 4)

	vars := func(qrep, workload string) map[string]string {
		return map[string]string{"$qrep": qrep, "$namespace": "default", "$workload": workload, "$srcwl": ".*", "$srcns": ".*",
			"$service": "web.default.svc.cluster.local", "$__rate_interval": "1m"}
	}
	positive := func(v []promSample) error {
		if len(v) != 1 || !(v[0].value > 0) {
			return fmt.Errorf("want one positive value")
		}
		return nil
	}
	one := func(v []promSample) error {
		if len(v) != 1 || v[0].value != 1 {
			return fmt.Errorf("want 1 (every request of the steady traffic succeeded)")
		}
		return nil
	}
	seconds := func(v []promSample) error {
		if len(v) != 1 || !(v[0].value > 0 && v[0].value < 1) {
			return fmt.Errorf("want a median above 0 and below a second")
		}
		return nil
	}
	labelled := func(label string, want ...string) func([]promSample) error {
		return func(v []promSample) error {
			var got []string
			for _, s := range v {
				got = append(got, s.metric[label])
			}
			for _, w := range want {
				if !slices.Contains(got, w) {
					return fmt.Errorf("want %s %q among the series", label, w)
				}
			}
			return nil
		}
	}
	// The series the steady traffic moved: mTLS from the client, 200; the
	// known traffic's others (503) did not move and are 0.
	bySource := func(v []promSample) error {
		moved := 0
		for _, s := range v {
			l := s.metric
			switch {
			case l["source_workload"] == "client" && l["source_workload_namespace"] == "default" && l["response_code"] == "200":
				if !(s.value > 0) {
					return fmt.Errorf("the 200s from default: %v, want > 0", s.value)
				}
				moved++
			case s.value != 0:
				return fmt.Errorf("series %v moved: %v", l, s.value)
			}
		}
		if moved != 1 {
			return fmt.Errorf("want one series of 200s from namespace default, got %d", moved)
		}
		return nil
	}
	checks := map[string]struct {
		vars  map[string]string
		check func([]promSample) error
	}{
		"istio-workload-dashboard | Incoming Request Volume":                       {vars("destination", "web"), positive},
		"istio-workload-dashboard | Incoming Success Rate (non-5xx responses)":     {vars("destination", "web"), one},
		"istio-workload-dashboard | Request Duration":                              {vars("destination", "web"), seconds},
		"istio-workload-dashboard | TCP Server Traffic":                            {vars("destination", "web"), positive},
		"istio-workload-dashboard | TCP Client Traffic":                            {vars("source", "client"), positive},
		"istio-workload-dashboard | Incoming Requests By Source And Response Code": {vars("destination", "web"), bySource},
		"istio-workload-dashboard | Bytes Sent to Incoming TCP Connection":         {vars("destination", "web"), positive},
		"istio-workload-dashboard | var workload":                                  {vars("destination", ""), labelled("destination_workload", "web")},
		"istio-service-dashboard | Client Request Volume":                          {vars("source", ""), positive},
		"istio-service-dashboard | Client Success Rate (non-5xx responses)":        {vars("source", ""), one},
		"istio-service-dashboard | Server Request Volume":                          {vars("destination", ""), positive},
		"istio-service-dashboard | Server Success Rate (non-5xx responses)":        {vars("destination", ""), one},
		"istio-service-dashboard | Server Request Duration":                        {vars("destination", ""), seconds},
		"istio-service-dashboard | var service":                                    {vars("destination", ""), labelled("destination_service", "web.default.svc.cluster.local")},
	}
	queries := dashboardQueries(t)
	for name, c := range checks {
		expr, ok := queries[name]
		if !ok {
			t.Errorf("%s: not in testdata", name)
			continue
		}
		for k, v := range c.vars {
			expr = strings.ReplaceAll(expr, k, v)
		}
		if inner, ok := strings.CutPrefix(expr, "query_result("); ok { // Grafana's variable query
			expr = strings.TrimSuffix(inner, ")")
		}
		got := p.query(t, expr)
		if err := c.check(got); err != nil {
			t.Errorf("%s: %v\n  query: %s\n  result: %+v", name, err, expr, got)
		} else {
			t.Logf("%s: %+v", name, got)
		}
	}
	if len(queries) != len(checks) {
		t.Errorf("testdata has %d queries, the test checks %d", len(queries), len(checks))
	}
}

// dashboardQueries reads testdata/istio-dashboard-queries.txt: the
// expression under each "== <dashboard> | <panel>" line, by that name.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	data, err := readTestdata("istio-dashboard-queries.txt")
	if err != nil {
		t.Fatal(err)
	}
	out, name := map[string]string{}, ""
	for line := range strings.Lines(data) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "== "):
			name = strings.TrimPrefix(line, "== ")
		case name != "":
			out[name], name = line, ""
		}
	}
	return out
}
