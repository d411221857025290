package tracing

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

// BenchmarkHandler is the cost a Tracer adds to one request, sampled (the
// span recorded and queued) and not (a context made and forwarded only).
func BenchmarkHandler(b *testing.B) {
	for _, bc := range []struct {
		name  string
		flags string // the caller's
	}{{"unsampled", "00"}, {"sampled", "01"}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig(0)
			cfg.QueueSize, cfg.BatchSize, cfg.FlushInterval = 1<<16, 512, 10*time.Millisecond
			tr := newWithExporter(cfg, tracetest.NewNoopExporter(), &Stats{}, zap.NewNop())
			defer tr.Shutdown(b.Context())
			h := tr.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			req := httptest.NewRequest(http.MethodGet, "http://cart.shop:8080/items", nil)
			req = req.WithContext(filters.NewContext(req.Context(), &filters.Info{Direction: filters.Outbound, Start: time.Now()}))
			w := filters.Observe(httptest.NewRecorder())
			b.ReportAllocs()
			for b.Loop() {
				req.Header = http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-" + bc.flags}}
				h.ServeHTTP(w, req)
			}
		})
	}
}
