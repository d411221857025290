package tracing

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

// slowExporter blocks each export until its context ends and records
// whether Shutdown was ever called (for the OTLP exporter, Shutdown is
// what closes its gRPC ClientConn).
type slowExporter struct{ shutdown atomic.Bool }

func (e *slowExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	<-ctx.Done()
	return ctx.Err()
}
func (e *slowExporter) Shutdown(context.Context) error { e.shutdown.Store(true); return nil }

// TestShutdownTimeoutStillShutsExporter: retireTracer gives Shutdown
// the export timeout; with a collector that does not answer, the queued
// batches take longer than that and Shutdown returns ctx's error, but the
// exporter (its gRPC connection) is shut down once the loop has finished,
// not leaked per reload.
func TestShutdownTimeoutStillShutsExporter(t *testing.T) {
	exp := &slowExporter{}
	cfg := testConfig(1)
	cfg.Timeout, cfg.QueueSize, cfg.BatchSize = 50*time.Millisecond, 8, 2
	tr := newWithExporter(cfg, exp, &Stats{}, zap.NewNop())
	h := tr.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for range 8 {
		req, _ := http.NewRequest(http.MethodGet, "http://a/", nil)
		req = req.WithContext(filters.NewContext(req.Context(), &filters.Info{}))
		h.ServeHTTP(filters.Observe(nopWriter{}), req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout) // as retireTracer
	defer cancel()
	err := tr.Shutdown(ctx)
	time.Sleep(time.Second) // the loop has long finished its exports
	if !exp.shutdown.Load() {
		t.Fatalf("Shutdown returned %v and the exporter was never shut down: its gRPC connection leaks per reload", err)
	}
}

type nopWriter struct{}

func (nopWriter) Header() http.Header         { return http.Header{} }
func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (nopWriter) WriteHeader(int)             {}

// TestB3AcceptOnly: the B3 spec lets the sampling state travel on
// its own ("Sampling state can also be sent on its own"); accept (b3: 1,
// X-B3-Sampled: 1) is an upstream decision to trace, not one for the
// ratio.
func TestB3AcceptOnly(t *testing.T) {
	for name, h := range map[string]http.Header{
		"single": {"B3": {"1"}},
		"multi":  {"X-B3-Sampled": {"1"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, spans, _ := serve(t, 0, filters.Outbound, h, http.StatusOK)
			if len(spans) != 1 {
				t.Fatalf("%d spans at ratio 0 for an accept decision, want 1", len(spans))
			}
		})
	}
}

// TestB3DebugForwarded: B3 debug (X-B3-Flags: 1) goes on as debug, not
// as a plain accept.
func TestB3DebugForwarded(t *testing.T) {
	seen, _, _ := serve(t, 0, filters.Outbound, http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Flags": {"1"}}, http.StatusOK)
	if seen.Get("X-B3-Flags") != "1" {
		t.Errorf("forwarded %v: debug flag lost", seen)
	}
}

// TestTracestateMultiple: W3C: several tracestate headers are one list,
// all of which goes on.
func TestTracestateMultiple(t *testing.T) {
	seen, _, _ := serve(t, 1, filters.Outbound, http.Header{
		"Traceparent": {"00-" + tid + "-" + sid + "-01"},
		"Tracestate":  {"a=1", "b=2"},
	}, http.StatusOK)
	if got := seen.Values("Tracestate"); len(got) != 2 && (len(got) != 1 || got[0] != "a=1,b=2") {
		t.Errorf("tracestate forwarded %q, want a=1 and b=2", got)
	}
}
