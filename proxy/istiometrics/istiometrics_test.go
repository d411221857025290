package istiometrics

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// published reads testdata/istio-standard-metrics.txt: its sections'
// lines.
func published(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("testdata/istio-standard-metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, section := map[string][]string{}, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			out[section] = append(out[section], line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// gather records through m into a fresh registry and returns its families
// by name.
func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestNamesArePublished: every metric, its type, every label and the
// bucket bounds are Istio's published ones; nothing else is exported.
func TestNamesArePublished(t *testing.T) {
	pub := published(t)
	m := New(Workload{})
	m.RecordRequest(&Request{Conn: Conn{Reporter: Source}, Code: 200, Flags: "-"})
	tcp := m.OpenTCP(Conn{Reporter: Destination})
	tcp.Received(1)
	tcp.Sent(2)
	tcp.End()
	got := gather(t, m)

	wantLabels := pub["labels"]
	httpOnly := pub["labels http only"]
	tcpLabels := slices.DeleteFunc(slices.Clone(wantLabels), func(l string) bool { return slices.Contains(httpOnly, l) })
	if diff := cmp.Diff(wantLabels, HTTPLabels()); diff != "" {
		t.Errorf("HTTP labels (-published +ours):\n%s", diff)
	}
	if diff := cmp.Diff(tcpLabels, TCPLabels()); diff != "" {
		t.Errorf("TCP labels (-published +ours):\n%s", diff)
	}
	var buckets []float64
	for _, f := range strings.Fields(pub["buckets"][0]) {
		b, err := strconv.ParseFloat(f, 64)
		if err != nil {
			t.Fatal(err)
		}
		buckets = append(buckets, b)
	}
	seen := map[string]bool{}
	for _, kind := range []string{"http", "tcp"} {
		for _, line := range pub["metrics "+kind] {
			name, typ, _ := strings.Cut(line, " ")
			seen[name] = true
			mf := got[name]
			if mf == nil {
				t.Errorf("%s: not exported", name)
				continue
			}
			if g := strings.ToLower(mf.GetType().String()); g != typ {
				t.Errorf("%s: type %s, want %s", name, g, typ)
			}
			want := wantLabels
			if kind == "tcp" {
				want = tcpLabels
			}
			var names []string
			for _, lp := range mf.GetMetric()[0].GetLabel() {
				names = append(names, lp.GetName())
			}
			if diff := cmp.Diff(slices.Sorted(slices.Values(want)), names); diff != "" {
				t.Errorf("%s labels (-published +ours):\n%s", name, diff)
			}
			if h := mf.GetMetric()[0].GetHistogram(); h != nil {
				var bounds []float64
				for _, b := range h.GetBucket() {
					bounds = append(bounds, b.GetUpperBound())
				}
				if diff := cmp.Diff(buckets, bounds); diff != "" {
					t.Errorf("%s buckets (-Envoy's +ours):\n%s", name, diff)
				}
			}
		}
	}
	for name := range got {
		if !seen[name] {
			t.Errorf("%s: exported, not one of Istio's published metrics", name)
		}
	}
}

// series is the labels of one series, as name=value pairs.
func series(mf *dto.MetricFamily) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, m := range mf.GetMetric() {
		l := map[string]string{}
		var key []string
		for _, lp := range m.GetLabel() {
			l[lp.GetName()] = lp.GetValue()
			key = append(key, lp.GetName()+"="+lp.GetValue())
		}
		out[strings.Join(key, ",")] = l
	}
	return out
}

// only returns the one series of mf, failing unless there is one.
func only(t *testing.T, mf *dto.MetricFamily) (map[string]string, *dto.Metric) {
	t.Helper()
	if mf == nil || len(mf.GetMetric()) != 1 {
		t.Fatalf("want one series, got %v", mf)
	}
	for _, l := range series(mf) {
		return l, mf.GetMetric()[0]
	}
	return nil, nil
}

// TestRequestLabels: the values of each side, as Istio's sidecars write
// them, and unknown where pillion does not know.
func TestRequestLabels(t *testing.T) {
	self := Workload{Name: "web", Namespace: "shop", App: "web-app", Version: "v2"}
	const caller, callee = "spiffe://cluster.local/ns/front/sa/fe", "spiffe://cluster.local/ns/shop/sa/web"
	for _, tt := range []struct {
		name string
		self Workload
		req  Request
		want map[string]string
	}{{
		name: "source, mTLS to a discovered Service, gRPC error",
		self: self,
		req: Request{Conn: Conn{Reporter: Source, Local: callee, Peer: caller, Service: upstream.Service{Namespace: "front", Name: "fe"}},
			GRPC: true, Code: 200, GRPCStatus: "5", Flags: "-"},
		want: map[string]string{
			"reporter": "source", "source_workload": "web", "source_workload_namespace": "shop", "source_principal": callee,
			"source_app": "web-app", "source_version": "v2", "source_canonical_service": "web-app", "source_canonical_revision": "v2", "source_cluster": "Kubernetes",
			"destination_workload": "unknown", "destination_workload_namespace": "front", "destination_principal": caller,
			"destination_app": "unknown", "destination_version": "unknown", "destination_service": "fe.front.svc.cluster.local",
			"destination_service_name": "fe", "destination_service_namespace": "front", "destination_canonical_service": "unknown",
			"destination_canonical_revision": "latest", "destination_cluster": "unknown",
			"request_protocol": "grpc", "response_flags": "-", "connection_security_policy": "unknown", "response_code": "200", "grpc_response_status": "5",
		},
	}, {
		name: "source, mTLS to a Service's endpoint whose workload discovery named",
		self: Workload{Name: "fe", Namespace: "front", Cluster: "east"},
		req: Request{Conn: Conn{Reporter: Source, Local: caller, Peer: callee, Service: upstream.Service{Namespace: "shop", Name: "web-svc"},
			PeerWorkload: Workload{Name: "web", Namespace: "shop", App: "web-app"}}, Code: 200, Flags: "-"},
		want: map[string]string{
			"reporter": "source", "source_workload": "fe", "source_workload_namespace": "front", "source_principal": caller,
			"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "fe", "source_canonical_revision": "latest", "source_cluster": "east",
			"destination_workload": "web", "destination_workload_namespace": "shop", "destination_principal": callee,
			"destination_app": "web-app", "destination_version": "unknown", "destination_service": "web-svc.shop.svc.cluster.local",
			"destination_service_name": "web-svc", "destination_service_namespace": "shop", "destination_canonical_service": "web-app",
			"destination_canonical_revision": "latest", "destination_cluster": "east",
			"request_protocol": "http", "response_flags": "-", "connection_security_policy": "unknown", "response_code": "200", "grpc_response_status": "",
		},
	}, {
		name: "source, plaintext to a pod of no Service, its workload named",
		req:  Request{Conn: Conn{Reporter: Source, PeerWorkload: Workload{Name: "legacy", Namespace: "old", Version: "1.0"}}, Code: 200, Flags: "-"},
		want: map[string]string{
			"reporter": "source", "source_workload": "unknown", "source_workload_namespace": "unknown", "source_principal": "unknown",
			"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "unknown", "source_canonical_revision": "latest", "source_cluster": "Kubernetes",
			"destination_workload": "legacy", "destination_workload_namespace": "old", "destination_principal": "unknown",
			"destination_app": "unknown", "destination_version": "1.0", "destination_service": "unknown",
			"destination_service_name": "unknown", "destination_service_namespace": "old", "destination_canonical_service": "legacy",
			"destination_canonical_revision": "1.0", "destination_cluster": "Kubernetes",
			"request_protocol": "http", "response_flags": "-", "connection_security_policy": "unknown", "response_code": "200", "grpc_response_status": "",
		},
	}, {
		name: "source, plaintext, nothing known",
		req:  Request{Conn: Conn{Reporter: Source}, Code: 503, GRPCStatus: "14", Flags: "UF"},
		want: map[string]string{
			"reporter": "source", "source_workload": "unknown", "source_workload_namespace": "unknown", "source_principal": "unknown",
			"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "unknown", "source_canonical_revision": "latest", "source_cluster": "Kubernetes",
			"destination_workload": "unknown", "destination_workload_namespace": "unknown", "destination_principal": "unknown",
			"destination_app": "unknown", "destination_version": "unknown", "destination_service": "unknown",
			"destination_service_name": "unknown", "destination_service_namespace": "unknown", "destination_canonical_service": "unknown",
			"destination_canonical_revision": "latest", "destination_cluster": "unknown",
			"request_protocol": "http", "response_flags": "UF", "connection_security_policy": "unknown", "response_code": "503", "grpc_response_status": "",
		},
	}, {
		name: "destination, mTLS, the Service the caller said",
		self: Workload{Name: "web", Namespace: "shop", Cluster: "east"},
		req:  Request{Conn: Conn{Reporter: Destination, Local: callee, Peer: caller, Service: upstream.Service{Namespace: "shop", Name: "web-svc"}}, Code: 200, Flags: "-"},
		want: map[string]string{
			"reporter": "destination", "source_workload": "unknown", "source_workload_namespace": "front", "source_principal": caller,
			"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "unknown", "source_canonical_revision": "latest", "source_cluster": "unknown",
			"destination_workload": "web", "destination_workload_namespace": "shop", "destination_principal": callee,
			"destination_app": "unknown", "destination_version": "unknown", "destination_service": "web-svc.shop.svc.cluster.local",
			"destination_service_name": "web-svc", "destination_service_namespace": "shop", "destination_canonical_service": "web",
			"destination_canonical_revision": "latest", "destination_cluster": "east",
			"request_protocol": "http", "response_flags": "-", "connection_security_policy": "mutual_tls", "response_code": "200", "grpc_response_status": "",
		},
	}, {
		name: "destination, mTLS, the caller's sidecar said its workload",
		self: Workload{Name: "web", Namespace: "shop", Cluster: "east"},
		req: Request{Conn: Conn{Reporter: Destination, Local: callee, Peer: caller, Service: upstream.Service{Namespace: "shop", Name: "web-svc"},
			PeerWorkload: Workload{Name: "fe", Namespace: "front", App: "fe-app", Version: "v1", Cluster: "west"}}, Code: 200, Flags: "-"},
		want: map[string]string{
			"reporter": "destination", "source_workload": "fe", "source_workload_namespace": "front", "source_principal": caller,
			"source_app": "fe-app", "source_version": "v1", "source_canonical_service": "fe-app", "source_canonical_revision": "v1", "source_cluster": "west",
			"destination_workload": "web", "destination_workload_namespace": "shop", "destination_principal": callee,
			"destination_app": "unknown", "destination_version": "unknown", "destination_service": "web-svc.shop.svc.cluster.local",
			"destination_service_name": "web-svc", "destination_service_namespace": "shop", "destination_canonical_service": "web",
			"destination_canonical_revision": "latest", "destination_cluster": "east",
			"request_protocol": "http", "response_flags": "-", "connection_security_policy": "mutual_tls", "response_code": "200", "grpc_response_status": "",
		},
	}, {
		name: "destination, plaintext caller, no response",
		self: self,
		req:  Request{Conn: Conn{Reporter: Destination}, Code: 0, Flags: "DC"},
		want: map[string]string{
			"reporter": "destination", "source_workload": "unknown", "source_workload_namespace": "unknown", "source_principal": "unknown",
			"source_app": "unknown", "source_version": "unknown", "source_canonical_service": "unknown", "source_canonical_revision": "latest", "source_cluster": "unknown",
			"destination_workload": "web", "destination_workload_namespace": "shop", "destination_principal": "unknown",
			"destination_app": "web-app", "destination_version": "v2", "destination_service": "web-app",
			"destination_service_name": "web-app", "destination_service_namespace": "shop", "destination_canonical_service": "web-app",
			"destination_canonical_revision": "v2", "destination_cluster": "Kubernetes",
			"request_protocol": "http", "response_flags": "DC", "connection_security_policy": "none", "response_code": "0", "grpc_response_status": "",
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			m := New(tt.self)
			tt.req.Duration, tt.req.RequestBytes, tt.req.ResponseBytes = 7*time.Millisecond, 12, 3000
			m.RecordRequest(&tt.req)
			m.RecordRequest(&tt.req)
			got := gather(t, m)
			l, c := only(t, got["istio_requests_total"])
			if diff := cmp.Diff(tt.want, l); diff != "" {
				t.Errorf("labels (-want +got):\n%s", diff)
			}
			if v := c.GetCounter().GetValue(); v != 2 {
				t.Errorf("istio_requests_total %v, want 2", v)
			}
			for name, sum := range map[string]float64{"istio_request_duration_milliseconds": 14, "istio_request_bytes": 24, "istio_response_bytes": 6000} {
				l, c := only(t, got[name])
				if diff := cmp.Diff(tt.want, l); diff != "" {
					t.Errorf("%s labels (-want +got):\n%s", name, diff)
				}
				if h := c.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() != sum {
					t.Errorf("%s: count %d sum %v, want 2 and %v", name, h.GetSampleCount(), h.GetSampleSum(), sum)
				}
			}
		})
	}
}

// TestTCP: a connection is counted opened when it opens, its bytes as
// they are reported while it is open, closed when it ends; one whose
// upstream failed, opened and closed at once with its flag.
func TestTCP(t *testing.T) {
	m := New(Workload{Name: "db", Namespace: "data"})
	c := m.OpenTCP(Conn{Reporter: Destination, Local: "spiffe://td/ns/data/sa/db", Peer: "spiffe://td/ns/shop/sa/web"})
	got := gather(t, m)
	if _, c := only(t, got["istio_tcp_connections_opened_total"]); c.GetCounter().GetValue() != 1 {
		t.Errorf("opened %v, want 1", c.GetCounter().GetValue())
	}
	if got["istio_tcp_connections_closed_total"] != nil {
		t.Errorf("closed counted before the connection ended")
	}
	c.Received(60)
	c.Sent(2500)
	got = gather(t, m)
	for name, want := range map[string]float64{"istio_tcp_received_bytes_total": 60, "istio_tcp_sent_bytes_total": 2500} {
		if _, c := only(t, got[name]); c.GetCounter().GetValue() != want {
			t.Errorf("while open: %s = %v, want %v", name, c.GetCounter().GetValue(), want)
		}
	}
	c.Received(40)
	c.End()
	got = gather(t, m)
	for name, want := range map[string]float64{"istio_tcp_connections_closed_total": 1, "istio_tcp_received_bytes_total": 100, "istio_tcp_sent_bytes_total": 2500} {
		l, c := only(t, got[name])
		if v := c.GetCounter().GetValue(); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
		if l["request_protocol"] != "tcp" || l["connection_security_policy"] != "mutual_tls" || l["source_workload_namespace"] != "shop" || l["destination_workload"] != "db" || l["response_flags"] != "-" {
			t.Errorf("%s labels %v", name, l)
		}
	}
	m.FailedTCP(Conn{Reporter: Source}, "UF")
	got = gather(t, m)
	for _, name := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
		n := 0
		for _, l := range series(got[name]) {
			if l["response_flags"] == "UF" && l["reporter"] == "source" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d series with UF, want 1: %v", name, n, series(got[name]))
		}
	}
}

// TestSwitchedOff: off, nothing is recorded and what was is dropped; on
// again, recording resumes.
func TestSwitchedOff(t *testing.T) {
	m := New(Workload{})
	r := &Request{Conn: Conn{Reporter: Source}, Code: 200, Flags: "-"}
	m.RecordRequest(r)
	open := m.OpenTCP(Conn{Reporter: Source})
	m.SetEnabled(false)
	m.RecordRequest(r)
	open.Received(1)
	open.End()
	closed := m.OpenTCP(Conn{Reporter: Source})
	closed.Sent(1)
	closed.End()
	m.FailedTCP(Conn{Reporter: Source}, "UF")
	if got := gather(t, m); len(got) != 0 {
		t.Errorf("off: %d families exported, want none", len(got))
	}
	m.SetEnabled(true)
	m.RecordRequest(r)
	if _, c := only(t, gather(t, m)["istio_requests_total"]); c.GetCounter().GetValue() != 1 {
		t.Errorf("on again: %v requests, want 1", c.GetCounter().GetValue())
	}
	// A connection that outlived the switch: its later bytes land in the
	// family switched on again.
	long := m.OpenTCP(Conn{Reporter: Source})
	m.SetEnabled(false)
	m.SetEnabled(true)
	long.Received(100)
	long.End()
	if _, c := only(t, gather(t, m)["istio_tcp_received_bytes_total"]); c.GetCounter().GetValue() != 100 {
		t.Errorf("bytes after off and on: %v, want 100", c.GetCounter().GetValue())
	}
}

// TestRecordRequestAllocations keeps recording a request on a known series
// free of allocations.
func TestRecordRequestAllocations(t *testing.T) {
	m := New(Workload{Name: "web"})
	r := &Request{Conn: Conn{Reporter: Destination, Peer: "spiffe://td/ns/a/sa/b", Local: "spiffe://td/ns/c/sa/d"}, Code: 200, Flags: "-", Duration: time.Millisecond}
	m.RecordRequest(r)
	if n := testing.AllocsPerRun(100, func() { m.RecordRequest(r) }); n > 0 {
		t.Errorf("RecordRequest allocates %v times per request", n)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		w    Workload
		want string
	}{
		{Workload{Name: "web", Namespace: "shop", App: "web", Version: "v1", Cluster: "east"}, ""},
		{Workload{Namespace: "a\nb"}, `istiometrics: workload Namespace: "a\nb": has a control character`},
		{Workload{Version: "\xff"}, `istiometrics: workload Version: "\xff": not UTF-8`},
		{Workload{Cluster: strings.Repeat("c", 254)}, "istiometrics: workload Cluster: 254 bytes: at most 253"},
	} {
		err := tt.w.Validate()
		if (err == nil && tt.want != "") || (err != nil && err.Error() != tt.want) {
			t.Errorf("%+v: %v, want %q", tt.w, err, tt.want)
		}
	}
}

func TestNamespaceOf(t *testing.T) {
	for id, want := range map[string]string{
		"spiffe://cluster.local/ns/shop/sa/web": "shop",
		"spiffe://td/ns/x":                      "x",
		"spiffe://td/workload":                  "",
		"":                                      "",
	} {
		if got := namespaceOf(id); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", id, got, want)
		}
	}
}

// TestPeer: what a sidecar tells its peers of its workload reads back
// whole, its namespace the peer's SPIFFE ID's; anything else says nothing.
func TestPeer(t *testing.T) {
	const peer = "spiffe://cluster.local/ns/front/sa/fe"
	w := Workload{Name: "fe", Namespace: "ignored", App: "fe-app", Version: "v1.2_3", Cluster: "west"}
	got, ok := ParsePeer(w.Peer(), peer)
	if want := (Workload{Name: "fe", Namespace: "front", App: "fe-app", Version: "v1.2_3", Cluster: "west"}); !ok || got != want {
		t.Errorf("ParsePeer(%q) = %+v, %v; want %+v", w.Peer(), got, ok, want)
	}
	if (Workload{App: "a"}).Peer() != "" {
		t.Error("a workload without a name says something")
	}
	for _, bad := range []string{"", "fe", "fe;a;v", "fe;a;v;c;x", ";a;v;c", "fe;a b;v;c", "fe;a;v;c\n", "fe;" + strings.Repeat("a", 64) + ";v;c", "fe/x;a;v;c"} {
		if w, ok := ParsePeer(bad, peer); ok {
			t.Errorf("ParsePeer(%q) = %+v, want nothing", bad, w)
		}
	}
}
