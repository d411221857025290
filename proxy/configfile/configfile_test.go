package configfile

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/router"
	"github.com/pillionmesh/pillion/proxy/tracing"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// tag is a test filter: it appends its name to the X-Tags request header.
type tag struct {
	Name  string           `json:"name"`
	Delay filters.Duration `json:"delay"`
	On    []string         `json:"on"` // YAML 1.1 would read the key as true
}

func (c *tag) Build(filters.Env) (filters.Filter, error) {
	if c.Name == "" {
		return nil, filters.Invalid("name", "must not be empty")
	}
	return tagFilter(c.Name), nil
}

type tagFilter string

func (f tagFilter) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	r.Header.Add("X-Tags", string(f))
	next.ServeHTTP(w, r)
}

func registry() filters.Registry {
	return filters.Registry{
		"tag":    func() filters.Config { return &tag{} },
		"router": func() filters.Config { return &router.Config{} },
	}
}

func TestParse(t *testing.T) {
	f, err := Parse([]byte(`
mesh:
  networks: [10.1.2.3/8, "fd00::/64", 192.168.1.7]
  exclude: [10.0.0.10]
  mode: STRICT
inbound:
  filters:
    - tag: {name: in, delay: 250ms, on: [x]}
outbound:
  filters:
    - tag: {name: one}
    - tag: {name: two}
    - router: {serverTiming: true}
`), registry())
	if err != nil {
		t.Fatal(err)
	}
	wantNets := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("192.168.1.7/32")}
	if diff := cmp.Diff(wantNets, f.Mesh.Networks, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("networks (-want +got):\n%s", diff)
	}
	if !f.Mesh.Contains(netip.MustParseAddr("::ffff:10.9.9.9")) || f.Mesh.Contains(netip.MustParseAddr("11.0.0.1")) {
		t.Errorf("Contains is wrong for %v", f.Mesh.Networks)
	}
	if f.Mesh.Contains(netip.MustParseAddr("10.0.0.10")) || !f.Mesh.Contains(netip.MustParseAddr("10.0.0.11")) {
		t.Errorf("Contains is wrong for exclude %v", f.Mesh.Exclude)
	}
	if f.Mesh.Mode != Strict {
		t.Errorf("mode = %v, want STRICT", f.Mesh.Mode)
	}
	names := func(specs []Spec) (out []string) {
		for _, s := range specs {
			out = append(out, s.Path)
		}
		return out
	}
	if diff := cmp.Diff([]string{"inbound.filters[0].tag", "inbound.router"}, names(f.Inbound)); diff != "" {
		t.Errorf("inbound (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"outbound.requestid", "outbound.filters[0].tag", "outbound.filters[1].tag", "outbound.filters[2].router"}, names(f.Outbound)); diff != "" {
		t.Errorf("outbound (-want +got):\n%s", diff)
	}
	if got := f.Inbound[0].Config.(*tag); got.Name != "in" || got.Delay.Std() != 250*time.Millisecond || len(got.On) != 1 {
		t.Errorf("inbound tag = %+v", got)
	}
	if !f.Outbound[3].Config.(*router.Config).ServerTiming {
		t.Errorf("router config lost")
	}
}

// TestParseMappedNetworks: an IPv4-mapped mesh network is the IPv4 range
// it stands for, as the capture rules' exclusions are; kept as IPv6 it was
// accepted and never matched, destinations being seen unmapped.
func TestParseMappedNetworks(t *testing.T) {
	f, err := Parse([]byte("mesh: {networks: [\"::ffff:10.0.0.0/104\"], exclude: [\"::ffff:10.0.0.10\"]}"), registry())
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}; !slices.Equal(f.Mesh.Networks, want) {
		t.Errorf("networks %v, want %v", f.Mesh.Networks, want)
	}
	for a, want := range map[string]bool{"10.1.2.3": true, "::ffff:10.1.2.3": true, "10.0.0.10": false, "11.0.0.1": false} {
		if got := f.Mesh.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", a, got, want)
		}
	}
}

func TestParseEmptyIsDefaults(t *testing.T) {
	for _, data := range []string{"", "# nothing\n", "{}", "inbound: {}\noutbound: {filters: []}"} {
		f, err := Parse([]byte(data), registry())
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if len(f.Mesh.Networks) != 0 || f.Mesh.Mode != Permissive || len(f.Inbound) != 1 || f.Inbound[0].Name != RouterName ||
			len(f.Outbound) != 2 || f.Outbound[0].Name != RequestIDName || f.Outbound[1].Name != RouterName {
			t.Errorf("%q: got %+v, want no mesh, the router alone inbound, requestid and the router outbound", data, f)
		}
		if !f.Metrics.Istio {
			t.Errorf("%q: Istio's metrics off, want them on by default", data)
		}
	}
}

// TestParseMetrics: metrics.istio turns the istio_* family on or off.
func TestParseMetrics(t *testing.T) {
	for data, want := range map[string]bool{"metrics: {istio: false}": false, "metrics: {istio: true}": true, "metrics: {}": true} {
		f, err := Parse([]byte(data), registry())
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if f.Metrics.Istio != want {
			t.Errorf("%q: Istio %v, want %v", data, f.Metrics.Istio, want)
		}
	}
}

func TestParseTracing(t *testing.T) {
	f, err := Parse([]byte("tracing:\n  otlp: {endpoint: 'jaeger.observability:4317', timeout: 2s}\n  sampling: 12.5\n  serviceName: web.shop\n"), registry())
	if err != nil {
		t.Fatal(err)
	}
	want := &tracing.Config{Endpoint: "jaeger.observability:4317", Timeout: 2 * time.Second, Sampling: 0.125, ServiceName: "web.shop",
		QueueSize: tracing.DefaultQueueSize, BatchSize: tracing.DefaultBatchSize, FlushInterval: tracing.DefaultFlushInterval}
	if diff := cmp.Diff(want, f.Tracing); diff != "" {
		t.Errorf("tracing (-want +got):\n%s", diff)
	}
	if f, err = Parse([]byte("mesh: {}"), registry()); err != nil || f.Tracing != nil {
		t.Errorf("no tracing section: %+v, %v; want nil: no spans, no exporter", f.Tracing, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown top-level field", "mesh: {}\nfliters: []", `fliters: unknown field (known: mesh, inbound, outbound, metrics, tracing)`},
		{"unknown metrics field", "metrics: {isito: false}", `metrics.isito: unknown field (known: istio)`},
		{"metrics switch not a boolean", "metrics: {istio: off}", `metrics.istio: want a boolean, got string`},
		{"tracing without otlp", "tracing: {sampling: 10}", `tracing.otlp: required: the OTLP gRPC collector to send spans to, such as {endpoint: otel-collector:4317}`},
		{"tracing bad endpoint", "tracing: {otlp: {endpoint: jaeger}}", `tracing.otlp.endpoint: "jaeger" is not host:port, such as otel-collector:4317`},
		{"tracing sampling over 100", "tracing: {otlp: {endpoint: 'jaeger:4317'}, sampling: 150}", `tracing.sampling: a percentage from 0 to 100, got 150`},
		{"tracing sampling a string", "tracing: {otlp: {endpoint: 'jaeger:4317'}, sampling: all}", `tracing.sampling: want a number, got string`},
		{"tracing unknown field", "tracing: {otlp: {endpoint: 'jaeger:4317', insecure: true}}", `tracing.otlp.insecure: unknown field (known: endpoint, timeout)`},
		{"tracing bad timeout", "tracing: {otlp: {endpoint: 'jaeger:4317', timeout: 5}}", `tracing.otlp.timeout: want a duration such as "250ms" or "15s", got 5`},
		{"unknown mesh field", "mesh: {netwroks: []}", `mesh.netwroks: unknown field (known: networks, exclude, mode)`},
		{"bad network", "mesh: {networks: [10.0.0.0/8, nope]}", `mesh.networks[1]: "nope" is not a CIDR such as 10.0.0.0/8`},
		{"bad exclude", "mesh: {exclude: [10.0.0.0/33]}", `mesh.exclude[0]: "10.0.0.0/33" is not a CIDR such as 10.0.0.0/8`},
		{"bad mode", "mesh: {mode: MUTUAL}", `mesh.mode: want STRICT or PERMISSIVE, got "MUTUAL"`},
		{"networks not a list", "mesh: {networks: 10.0.0.0/8}", `mesh.networks: want a list, got string`},
		{"unknown chain field", "inbound: {filter: []}", `inbound.filter: unknown field (known: generateRequestId, filters)`},
		{"unknown filter", "outbound: {filters: [{ratelimt: {}}]}", `outbound.filters[0]: unknown filter "ratelimt" (known: router, tag)`},
		{"two filters in one item", "outbound: {filters: [{tag: {name: a}, router: {}}]}", `outbound.filters[0]: want one filter name as the only key, such as {ratelimit: {...}}, got 2 keys`},
		{"unknown filter field", "inbound: {filters: [{tag: {name: a}}, {tag: {nmae: b}}]}", `inbound.filters[1].tag.nmae: unknown field (known: name, delay, on)`},
		{"wrong type in filter", "inbound: {filters: [{tag: {name: [a]}}]}", `inbound.filters[0].tag.name: want a string, got list`},
		{"bad duration", "inbound: {filters: [{tag: {name: a, delay: 5}}]}", `inbound.filters[0].tag.delay: want a duration such as "250ms" or "15s", got 5`},
		{"duration typo", "inbound: {filters: [{tag: {name: a, delay: 5sec}}]}", `inbound.filters[0].tag.delay: want a duration such as "250ms" or "15s", got "5sec"`},
		{"infinity", "inbound: {filters: [{tag: {name: a, weight: .inf}}]}", `+Inf is not a number a config can hold`},
		{"two documents", "mesh: {}\n---\nmesh: {}\n", `yaml: one document only: the file has a second one (after ---)`},
		{"router not last", "outbound: {filters: [{router: {}}, {tag: {name: a}}]}", `outbound.filters[0].router: the router forwards the request: it must be the last filter`},
		{"top level is a list", "- a\n- b", `want a mapping, got list`},
		{"duplicate key", "mesh: {}\nmesh: {}", `yaml: unmarshal errors:
  line 2: mapping key "mesh" already defined at line 1`},
		{"key not a string", "mesh: {1: x}", `every mapping key must be a string`},
		{"not YAML", "mesh: [", `yaml: line 1: did not find expected node content`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), registry())
			if err == nil || err.Error() != tc.want {
				t.Errorf("error = %v\nwant    %s", err, tc.want)
			}
		})
	}
}

type fakeUpstream struct{}

func (fakeUpstream) RoundTrip(r *http.Request, _ upstream.Endpoint, _ upstream.Protocol) (*http.Response, error) {
	rec := httptest.NewRecorder()
	rec.Header().Set("X-Tags-Seen", strings.Join(r.Header.Values("X-Tags"), ","))
	rec.WriteHeader(http.StatusTeapot)
	res := rec.Result()
	res.Request = r // as real transports do
	return res, nil
}

func env() filters.Env {
	return filters.Env{Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now, Upstream: fakeUpstream{},
		Route: func(netip.AddrPort) upstream.Route {
			return upstream.Fixed{Addr: netip.MustParseAddrPort("127.0.0.1:1")}
		}}
}

func TestBuildRunsFiltersInOrderThenTheRouter(t *testing.T) {
	f, err := Parse([]byte("outbound: {generateRequestId: false, filters: [{tag: {name: one}}, {tag: {name: two}}]}"), registry())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Build(f.Outbound, env())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"tag", "tag"}, c.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "http://b/", nil)
	req = req.WithContext(filters.NewContext(req.Context(), &filters.Info{}))
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusTeapot || rec.Header().Get("X-Tags-Seen") != "one,two" {
		t.Errorf("got %d %v, want the router's 418 after both filters", rec.Code, rec.Header())
	}
}

func TestBuildErrorNamesTheField(t *testing.T) {
	f, err := Parse([]byte("inbound: {filters: [{tag: {name: ok}}, {tag: {}}]}"), registry())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(f.Inbound, env())
	if want := "inbound.filters[1].tag.name: must not be empty"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

// FuzzParse feeds arbitrary files to Parse and Build: they must never
// panic, and a file Parse accepts has a router last in both chains.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "mesh: {networks: [10.0.0.0/8]}",
		"outbound: {filters: [{tag: {name: a, delay: 1s}}, {router: {upstreamServiceTimeHeader: x}}]}",
		"inbound: {filters: [{router: {}}, {tag: {}}]}", "- 1", "mesh: {networks: [\"::/0\", 1.2.3.4]}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		file, err := Parse([]byte(data), registry())
		if err != nil {
			return
		}
		for _, specs := range [][]Spec{file.Inbound, file.Outbound} {
			if len(specs) == 0 || specs[len(specs)-1].Name != RouterName {
				t.Fatalf("chain without the router last: %+v", specs)
			}
			_, _ = Build(specs, env())
		}
	})
}

// TestParseKeysInAnyCase: keys are matched as encoding/json matches them
// (the exact name first, else regardless of case) and null leaves a value
// as it is, so that configs written before the strict decoder went
// through filters.DecodeStrict still load.
func TestParseKeysInAnyCase(t *testing.T) {
	f, err := Parse([]byte("outbound: {generateRequestID: false}\ntracing: {OTLP: {Endpoint: 'jaeger:4317'}, sampling: ~}\n"), registry())
	if err != nil {
		t.Fatal(err)
	}
	if f.Tracing == nil || f.Tracing.Endpoint != "jaeger:4317" {
		t.Fatalf("tracing = %+v, want the OTLP endpoint jaeger:4317", f.Tracing)
	}
	if f.Tracing.Sampling != tracing.DefaultSampling/100 {
		t.Errorf("sampling: null gave %v, want the default %v", f.Tracing.Sampling, tracing.DefaultSampling/100)
	}
}
