package proxy

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/tracing"
)

// The tracing side of a config (proxy/tracing makes the spans): a config
// with a `tracing` section gets a Tracer, kept across reloads that leave
// the section as it was, replaced when it changes. The Tracer replaced is
// flushed and shut down in the background, so that neither Apply nor a
// request waits for a collector.

// nextTracer returns the Tracer for cfg: prev's when its config is the
// same, a new one otherwise, nil for a nil cfg.
func (s *Server) nextTracer(prev *running, cfg *tracing.Config) (*tracing.Tracer, error) {
	if cfg == nil {
		return nil, nil
	}
	if prev != nil && prev.tracer != nil && *prev.tracer.Config() == *cfg {
		return prev.tracer, nil
	}
	t, err := tracing.New(cfg, &s.tracingStats, s.log.Named("tracing"))
	if err != nil {
		return nil, err
	}
	s.log.Info("tracing: exporting spans", zap.String("endpoint", cfg.Endpoint), zap.Float64("sampling_percent", cfg.Sampling*100))
	return t, nil
}

// retireTracer shuts t down in the background: requests that started
// with it end their spans first (they hold the running config), then what
// is queued is exported within the export timeout.
func (s *Server) retireTracer(t *tracing.Tracer) {
	if t == nil {
		return
	}
	go func() {
		time.Sleep(s.cfg.DrainTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), t.Config().Timeout)
		defer cancel()
		if err := t.Shutdown(ctx); err != nil {
			s.log.Warn("tracing: shutting down the replaced exporter", zap.Error(err))
		}
	}()
}

// flushTracing exports the spans still queued when the server stops.
func (s *Server) flushTracing() {
	r := s.config.Load()
	if r == nil || r.tracer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.tracer.Config().Timeout)
	defer cancel()
	if err := r.tracer.Shutdown(ctx); err != nil {
		s.log.Warn("tracing: flushing spans at exit", zap.Error(err))
	}
}
