package proxy

import (
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/tracing"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// running is one applied config file: its parsed form and the chains built
// from it. It is immutable; Apply replaces it whole.
type running struct {
	file    *configfile.File
	chains  [2]*filters.Chain // by Direction
	tracer  *tracing.Tracer   // nil without a tracing section
	applied time.Time
}

func (r *running) chain(d Direction) *filters.Chain { return r.chains[d] }

// Apply builds the filter chains of f and swaps them in atomically:
// requests that started keep the chain they started with, new ones get the
// new one. If a chain fails to build, nothing changes and the error names
// the field. Apply is safe to call while Run runs.
func (s *Server) Apply(f *configfile.File) error {
	if err := s.checkMesh(f.Mesh); err != nil {
		return err
	}
	next := &running{file: f, applied: time.Now()}
	for _, d := range []Direction{Outbound, Inbound} {
		specs := f.Outbound
		if d == Inbound {
			specs = f.Inbound
		}
		env := filters.Env{
			Direction:     d,
			Log:           s.log,
			AccessLog:     s.log.Named("access"),
			AccessLogText: s.accessLogText(),
			Now:           time.Now,
			Upstream:      s.pools[d],
			Route:         func(dst netip.AddrPort) upstream.Route { return s.routes.route(s.life.hardStop, d, f.Mesh, dst) },
			Workload:      s.cfg.Workload.Peer(),
		}
		c, err := configfile.Build(specs, env)
		if err != nil {
			return err
		}
		next.chains[d] = c
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	prev := s.config.Load()
	var err error
	if next.tracer, err = s.nextTracer(prev, f.Tracing); err != nil {
		return err
	}
	if s.istio != nil {
		s.istio.SetEnabled(f.Metrics.Istio)
	}
	s.config.Store(next)
	if prev != nil && prev.tracer != next.tracer {
		s.retireTracer(prev.tracer)
	}
	if prev != nil && !(slices.Equal(prev.file.Mesh.Networks, f.Mesh.Networks) && slices.Equal(prev.file.Mesh.Exclude, f.Mesh.Exclude)) {
		// Idle pooled connections were dialled for the old membership
		// (the application's, inbound, are not meshed).
		s.pools[Outbound].CloseIdle()
	}
	return nil
}

// accessLogText is where access log lines in a text format go.
func (s *Server) accessLogText() io.Writer {
	if s.cfg.AccessLogText == nil {
		return io.Discard
	}
	return s.cfg.AccessLogText
}

// Config returns the config file in use and when it was applied.
func (s *Server) Config() (*configfile.File, time.Time) {
	r := s.config.Load()
	return r.file, r.applied
}
