// Package tracing makes the sidecar's spans: one per HTTP request, a client
// span on the outbound side and a server span on the inbound side, parented
// on the caller's W3C traceparent/tracestate or B3 (single or multi
// header) context, forwarded with the new span's context in W3C and in the
// B3 formats the request came with, and exported over OTLP gRPC in bounded
// batches that drop, and count, rather than make a request wait.
//
// A Tracer is built from the config file's `tracing` section and replaced
// whole on reload; a nil *Tracer traces nothing and costs nothing.
package tracing

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

// Tracer makes the spans of one config. Safe for concurrent use.
type Tracer struct {
	cfg      *Config
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// New returns a Tracer exporting to cfg's OTLP endpoint, counting into
// stats. Nothing is dialled until the first export; the caller must
// Shutdown the Tracer it no longer uses.
func New(cfg *Config, stats *Stats, log *zap.Logger) (*Tracer, error) {
	exp, err := otlptracegrpc.New(context.Background(),
		otlptracegrpc.WithEndpoint(cfg.Endpoint),
		otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithTimeout(cfg.Timeout),
		// A batch the collector does not take is dropped and counted:
		// retrying would hold the queue while new spans arrive.
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}),
	)
	if err != nil {
		return nil, fmt.Errorf("tracing: otlp exporter for %s: %w", cfg.Endpoint, err)
	}
	return newWithExporter(cfg, exp, stats, log), nil
}

// newWithExporter is New with the exporter given (tests pass an in-memory
// one).
func newWithExporter(cfg *Config, exp sdktrace.SpanExporter, stats *Stats, log *zap.Logger) *Tracer {
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(newSampler(cfg.Sampling)),
		sdktrace.WithSpanProcessor(newBatcher(exp, cfg, stats, log)),
		sdktrace.WithResource(resource.NewSchemaless(
			semconv.ServiceName(cfg.ServiceName),
			attribute.String("telemetry.sdk.name", "opentelemetry"),
			attribute.String("telemetry.sdk.language", "go"),
		)),
	)
	return &Tracer{cfg: cfg, provider: tp, tracer: tp.Tracer("github.com/pillionmesh/pillion/proxy")}
}

// Config returns the config t was built from (nil for a nil t).
func (t *Tracer) Config() *Config {
	if t == nil {
		return nil
	}
	return t.cfg
}

// Shutdown exports the spans still queued and stops the exporter, giving
// up when ctx ends. A nil t does nothing.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}

// Handler returns h wrapped so that each request gets a span; a nil t
// returns h itself. The request must carry a filters.Info (the proxy puts
// one in every request's context); its headers are changed in place to
// carry the new span's context to the upstream.
func (t *Tracer) Handler(h http.Handler) http.Handler {
	if t == nil {
		return h
	}
	return &handler{t: t, next: h}
}

type handler struct {
	t    *Tracer
	next http.Handler
}

// statusWriter is what tells a response's status: filters.Observer, which
// the proxy's metrics already wrap every response in.
type statusWriter interface {
	http.ResponseWriter
	Status() int
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := filters.FromContext(r.Context())
	ctx, f := extract(r.Context(), r.Header)
	parent := trace.SpanContextFromContext(ctx).SpanID()
	kind := trace.SpanKindServer
	if info.Direction == filters.Outbound {
		kind = trace.SpanKindClient
	}
	start := info.Start
	if start.IsZero() {
		start = time.Now()
	}
	ctx, span := h.t.tracer.Start(ctx, spanName(r, info), trace.WithSpanKind(kind), trace.WithTimestamp(start))
	inject(ctx, r.Header, f, parent)
	sw, ok := w.(statusWriter)
	if !ok {
		o := filters.Observe(w)
		sw, w = o, o
	}
	returned := false
	defer func() { end(span, r, info, sw.Status(), returned) }()
	h.next.ServeHTTP(w, r)
	returned = true
}
