package admin

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// testRegistry holds one metric of each kind with known values.
func testRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "pillion_test_total", Help: "A counter."})
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pillion_requests_total", Help: "Requests."},
		[]string{"direction", "code"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pillion_conns_active", Help: "A gauge."})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pillion_latency_seconds", Help: "A histogram.",
		Buckets: []float64{0.1, 1}})
	s := prometheus.NewSummary(prometheus.SummaryOpts{Name: "pillion_sniff_seconds", Help: "A summary.",
		Objectives: map[float64]float64{0.5: 0}})
	reg.MustRegister(c, vec, g, h, s)

	c.Add(3)
	vec.WithLabelValues("inbound", "200").Add(2)
	vec.WithLabelValues("outbound", "503").Inc()
	g.Set(1.5e6)
	for _, v := range []float64{0.0625, 0.5, 2.25} {
		h.Observe(v)
	}
	for _, v := range []float64{1, 2, 3} {
		s.Observe(v)
	}
	return reg
}

const wantStats = `pillion_conns_active: 1500000
pillion_latency_seconds_bucket{le="0.1"}: 1
pillion_latency_seconds_bucket{le="1"}: 2
pillion_latency_seconds_bucket{le="+Inf"}: 3
pillion_latency_seconds_count: 3
pillion_latency_seconds_sum: 2.8125
pillion_requests_total{code="200",direction="inbound"}: 2
pillion_requests_total{code="503",direction="outbound"}: 1
pillion_sniff_seconds{quantile="0.5"}: 2
pillion_sniff_seconds_count: 3
pillion_sniff_seconds_sum: 6
pillion_test_total: 3
`

func TestStats(t *testing.T) {
	h := New(Sources{Gatherer: testRegistry(t)}, nil)
	tests := []struct {
		target string
		code   int
		body   string
	}{
		{"/stats", 200, wantStats},
		{"/stats?format=text", 200, wantStats},
		{"/stats?filter=requests", 200, "pillion_requests_total{code=\"200\",direction=\"inbound\"}: 2\n" +
			"pillion_requests_total{code=\"503\",direction=\"outbound\"}: 1\n"},
		{"/stats?filter=" + `code="503"`, 200, "pillion_requests_total{code=\"503\",direction=\"outbound\"}: 1\n"},
		{"/stats?filter=_count$", 200, "pillion_latency_seconds_count: 3\npillion_sniff_seconds_count: 3\n"},
		{"/stats?filter=nothing-matches", 200, ""},
		{"/stats?filter=(", 400, "stats: bad filter \"(\": error parsing regexp: missing closing ): `(`\n"},
		{"/stats?format=yaml", 400, "stats: unknown format \"yaml\": valid formats are text, json, prometheus\n"},
		{"/stats/prometheus?filter=[", 400, "stats: bad filter \"[\": error parsing regexp: missing closing ]: `[`\n"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			check(t, do(t, h, "GET", tt.target), tt.code, tt.body)
		})
	}
}

func TestStatsJSON(t *testing.T) {
	h := New(Sources{Gatherer: testRegistry(t)}, nil)
	checkJSON(t, do(t, h, "GET", "/stats?format=json&filter=latency|test_total"), `{"stats":[
		{"name":"pillion_latency_seconds_bucket{le=\"0.1\"}","value":1},
		{"name":"pillion_latency_seconds_bucket{le=\"1\"}","value":2},
		{"name":"pillion_latency_seconds_bucket{le=\"+Inf\"}","value":3},
		{"name":"pillion_latency_seconds_count","value":3},
		{"name":"pillion_latency_seconds_sum","value":2.8125},
		{"name":"pillion_test_total","value":3}]}`)
	checkJSON(t, do(t, h, "GET", "/stats?format=json&filter=nothing"), `{"stats":[]}`)

	// JSON has no NaN or Inf: those values are strings.
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nan"}, math.NaN),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "inf"}, func() float64 { return math.Inf(1) }))
	h = New(Sources{Gatherer: reg}, nil)
	checkJSON(t, do(t, h, "GET", "/stats?format=json"), `{"stats":[{"name":"inf","value":"+Inf"},{"name":"nan","value":"NaN"}]}`)
	check(t, do(t, h, "GET", "/stats"), 200, "inf: +Inf\nnan: NaN\n")
}

func TestStatsPrometheus(t *testing.T) {
	h := New(Sources{Gatherer: testRegistry(t)}, nil)
	want := []string{
		"# HELP pillion_test_total A counter.\n# TYPE pillion_test_total counter\npillion_test_total 3\n",
		`pillion_requests_total{code="503",direction="outbound"} 1` + "\n",
		"# TYPE pillion_latency_seconds histogram\n",
		`pillion_latency_seconds_bucket{le="+Inf"} 3` + "\n",
		"pillion_conns_active 1.5e+06\n",
	}
	for _, target := range []string{"/stats/prometheus", "/stats?format=prometheus"} {
		rec := do(t, h, "GET", target)
		if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Errorf("GET %s: status %d, Content-Type %q", target, rec.Code, rec.Header().Get("Content-Type"))
		}
		for _, w := range want {
			if !strings.Contains(rec.Body.String(), w) {
				t.Errorf("GET %s: body lacks %q:\n%s", target, w, rec.Body)
			}
		}
	}

	// A filter keeps the families whose name matches.
	rec := do(t, h, "GET", "/stats/prometheus?filter=^pillion_conns")
	if want := "# HELP pillion_conns_active A gauge.\n# TYPE pillion_conns_active gauge\npillion_conns_active 1.5e+06\n"; rec.Body.String() != want {
		t.Errorf("filtered exposition = %q, want %q", rec.Body, want)
	}
}
