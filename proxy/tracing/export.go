package tracing

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/zap"
)

// Stats counts what became of ended, sampled spans, across every Tracer
// built with it (a reload builds a new Tracer with the same Stats). Safe
// for concurrent use; the zero value is ready.
type Stats struct {
	// Exported spans were accepted by the collector.
	Exported atomic.Int64
	// QueueFull spans were dropped at once: the export queue was full.
	QueueFull atomic.Int64
	// ExportFailed spans were in a batch the collector did not take
	// (unreachable, refused, timed out). Batches are not retried.
	ExportFailed atomic.Int64
}

// NewCollector returns the Prometheus collector of s:
// pillion_tracing_spans_exported_total and
// pillion_tracing_spans_dropped_total{reason="queue_full"|"export_failed"}.
func NewCollector(s *Stats) prometheus.Collector { return &collector{s: s} }

type collector struct{ s *Stats }

var (
	exportedDesc = prometheus.NewDesc("pillion_tracing_spans_exported_total",
		"Sampled spans the OTLP collector accepted.", nil, nil)
	droppedDesc = prometheus.NewDesc("pillion_tracing_spans_dropped_total",
		"Sampled spans never exported, by reason: queue_full (dropped at once, the request never waits), export_failed (the collector did not take their batch).", []string{"reason"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- exportedDesc; ch <- droppedDesc }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(exportedDesc, prometheus.CounterValue, float64(c.s.Exported.Load()))
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(c.s.QueueFull.Load()), "queue_full")
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(c.s.ExportFailed.Load()), "export_failed")
}

// batcher is the span processor: ended spans go into a bounded queue
// without waiting (a full queue drops and counts), and one goroutine
// sends them in batches of at most batchSize, at least every interval.
// The SDK's BatchSpanProcessor also drops, but does not say how many.
type batcher struct {
	exp      sdktrace.SpanExporter
	queue    chan sdktrace.ReadOnlySpan
	size     int
	interval time.Duration
	timeout  time.Duration
	stats    *Stats
	log      *zap.Logger

	flush    chan chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	failing  bool // the last export failed (loop goroutine only)
}

var _ sdktrace.SpanProcessor = (*batcher)(nil)

func newBatcher(exp sdktrace.SpanExporter, cfg *Config, stats *Stats, log *zap.Logger) *batcher {
	b := &batcher{
		exp: exp, queue: make(chan sdktrace.ReadOnlySpan, cfg.QueueSize),
		size: cfg.BatchSize, interval: cfg.FlushInterval, timeout: cfg.Timeout,
		stats: stats, log: log,
		flush: make(chan chan struct{}), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go b.loop()
	return b
}

// OnStart does nothing.
func (b *batcher) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or drops it when the queue is full.
func (b *batcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case b.queue <- s:
	default:
		b.stats.QueueFull.Add(1)
	}
}

func (b *batcher) loop() {
	defer close(b.done)
	t := time.NewTicker(b.interval)
	defer t.Stop()
	batch := make([]sdktrace.ReadOnlySpan, 0, b.size)
	for {
		select {
		case s := <-b.queue:
			if batch = append(batch, s); len(batch) >= b.size {
				batch = b.export(batch)
			}
		case <-t.C:
			batch = b.export(batch)
		case ack := <-b.flush:
			batch = b.export(b.drain(batch))
			close(ack)
		case <-b.stop:
			b.export(b.drain(batch))
			return
		}
	}
}

// drain adds what is queued now to batch, exporting full batches.
func (b *batcher) drain(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	for {
		select {
		case s := <-b.queue:
			if batch = append(batch, s); len(batch) >= b.size {
				batch = b.export(batch)
			}
		default:
			return batch
		}
	}
}

// export sends batch and returns it emptied.
func (b *batcher) export(batch []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	err := b.exp.ExportSpans(ctx, batch)
	cancel()
	n := int64(len(batch))
	switch {
	case err != nil:
		b.stats.ExportFailed.Add(n)
		if !b.failing {
			b.log.Warn("tracing: export failed; spans are dropped and counted until it works again", zap.Int("spans", len(batch)), zap.Error(err))
		}
		b.failing = true
	default:
		b.stats.Exported.Add(n)
		if b.failing {
			b.log.Info("tracing: export works again")
		}
		b.failing = false
	}
	clear(batch)
	return batch[:0]
}

// ForceFlush exports what is queued and waits for it, or for ctx.
func (b *batcher) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case b.flush <- ack:
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued, then shuts the exporter down; it
// returns when done or when ctx ends. Then the exports go on in the
// background, each bounded by its timeout, and the exporter (for OTLP,
// its gRPC connection) is shut down after them all the same.
func (b *batcher) Shutdown(ctx context.Context) error {
	b.stopOnce.Do(func() { close(b.stop) })
	select {
	case <-b.done:
	case <-ctx.Done():
		go func() {
			<-b.done
			sctx, cancel := context.WithTimeout(context.Background(), b.timeout)
			defer cancel()
			_ = b.exp.Shutdown(sctx)
		}()
		return ctx.Err()
	}
	return b.exp.Shutdown(ctx)
}
