package proxy

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// TestApplyTracing: a tracing section gets a Tracer; reloading the same
// section keeps it (no new exporter), a changed one replaces it, none
// removes it; the drop counters are registered from the start.
func TestApplyTracing(t *testing.T) {
	cfg := DefaultConfig()
	reg := prometheus.NewPedanticRegistry()
	cfg.Registerer = reg
	s, err := New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	apply := func(yaml string) {
		t.Helper()
		f, err := configfile.Parse([]byte(yaml), builtin.Registry())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(f); err != nil {
			t.Fatal(err)
		}
	}
	if s.config.Load().tracer != nil {
		t.Fatal("a tracer without a tracing section")
	}
	apply("tracing: {otlp: {endpoint: '127.0.0.1:4317'}}")
	first := s.config.Load().tracer
	if first == nil || first.Config().Sampling != 0.01 {
		t.Fatalf("tracer %+v, want one sampling 1 %%", first.Config())
	}
	apply("tracing: {otlp: {endpoint: '127.0.0.1:4317'}}\noutbound: {filters: [{requestid: {}}]}")
	if s.config.Load().tracer != first {
		t.Error("an unchanged tracing section got a new tracer")
	}
	apply("tracing: {otlp: {endpoint: '127.0.0.1:4317'}, sampling: 50}")
	if tr := s.config.Load().tracer; tr == first || tr.Config().Sampling != 0.5 {
		t.Errorf("a changed section kept the tracer, or got %+v", tr.Config())
	}
	apply("")
	if s.config.Load().tracer != nil {
		t.Error("no tracing section, still a tracer")
	}
	want := `
# HELP pillion_tracing_spans_dropped_total Sampled spans never exported, by reason: queue_full (dropped at once, the request never waits), export_failed (the collector did not take their batch).
# TYPE pillion_tracing_spans_dropped_total counter
pillion_tracing_spans_dropped_total{reason="export_failed"} 0
pillion_tracing_spans_dropped_total{reason="queue_full"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pillion_tracing_spans_dropped_total"); err != nil {
		t.Error(err)
	}
}
