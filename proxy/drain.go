package proxy

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/relay"
)

// How a sidecar stops, in order (Run):
//
//  1. a drain starts: Run's context ends (SIGTERM), or Drain or Quit is
//     called. Readiness fails at once, so that kubelet takes the pod out of
//     its Services.
//  2. the drain period (Config.DrainPeriod; none after Quit): kube-proxy
//     and the other sidecars keep sending new connections to the pod until
//     the endpoint's removal reaches them, so both listeners keep accepting
//     and serving them. Inbound HTTP answers carry Connection: close, which
//     closes an HTTP/1 connection after the answer and makes net/http send
//     a graceful GOAWAY on an HTTP/2 one (the streams it already took
//     finish; the peer opens a new connection for the next request). The
//     outbound side serves the application as usual: it may call out while
//     it shuts down itself. Opaque TCP connections carry on.
//  3. the listeners close: new connections are refused. The HTTP servers
//     close their idle connections and send GOAWAY on the others; open
//     connections get Config.DrainTimeout to end.
//  4. those still open are reset.

// Drain starts a drain as Run does when its context ends: readiness fails
// at once, the listeners keep accepting for DrainPeriod, then close, and
// open connections get DrainTimeout; the server then stays DRAINED until
// Run's context ends. It is idempotent and safe to call at any time.
func (s *Server) Drain() {
	s.drainOne.Do(func() {
		s.draining.Store(true)
		close(s.drainReq)
	})
}

// Quit is Drain without the drain period: the listeners close at once, or,
// when a drain period runs, as soon as Quit is called. Open connections
// still get DrainTimeout. It is for a caller that knows nobody will
// connect any more (a Job's application that finished, calling
// /quitquitquit). It is idempotent and safe to call at any time.
func (s *Server) Quit() {
	s.quitOne.Do(func() {
		s.draining.Store(true)
		close(s.quitReq)
	})
}

// drainPeriod waits DrainPeriod, or until Quit.
func (s *Server) drainPeriod() {
	select {
	case <-s.quitReq:
		return
	default:
	}
	if s.cfg.DrainPeriod <= 0 {
		return
	}
	s.log.Info("drain period started: listeners still accept; inbound HTTP is told to close",
		zap.Duration("period", s.cfg.DrainPeriod))
	t := time.NewTimer(s.cfg.DrainPeriod)
	defer t.Stop()
	select {
	case <-t.C:
		s.log.Info("drain period ended")
	case <-s.quitReq:
		s.log.Info("drain period cut short by quit")
	}
}

// drain waits for open connections up to DrainTimeout, then resets them
// (a reset, not a FIN: a cut-off transfer must not look complete).
func (s *Server) drain() {
	defer s.cancelHard()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	// HTTP servers close idle keep-alive connections and send GOAWAY;
	// requests in flight finish.
	shutCtx, cancelShut := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancelShut()
	var shutdowns sync.WaitGroup
	defer shutdowns.Wait()
	for _, hs := range s.http {
		shutdowns.Go(func() { hs.shutdown(shutCtx) })
	}
	if n := s.active.Load(); n > 0 {
		s.log.Info("draining", zap.Int64("connections", n), zap.Duration("timeout", s.cfg.DrainTimeout))
	}
	select {
	case <-done:
		return
	case <-time.After(s.cfg.DrainTimeout):
	}
	s.mu.Lock()
	s.closing = true
	s.log.Warn("drain time-out: resetting connections", zap.Int("sockets", len(s.conns)))
	for c := range s.conns {
		relay.Reset(c)
	}
	s.mu.Unlock()
	s.cancelHard()
	<-done
}
