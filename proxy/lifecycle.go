package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
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

// lifecycle is where a Server is between New and the end of Run (its
// State), and the requests that move it on: Drain, Quit, the identity's
// first SVID. Run alone moves it (listening, becomeReady, waitDrain,
// drainPeriod, the closed and drained flags); state, listeners and the
// requests are safe for concurrent use. init must be called before any
// method.
type lifecycle struct {
	ready    chan struct{} // closed once LIVE
	listened atomic.Bool   // the listeners are open
	addrs    []Listener    // the listeners, set before listened
	draining atomic.Bool   // Drain or Quit was called, or Run's context ended
	closed   atomic.Bool   // the drain period is over: the listeners are closed
	drained  atomic.Bool   // the drain is over
	drainReq chan struct{} // closed by requestDrain
	drainOne sync.Once
	quitReq  chan struct{} // closed by requestQuit
	quitOne  sync.Once

	// hardStop is cancelled when the drain time-out passes: dials in flight
	// give up.
	hardStop   context.Context
	cancelHard context.CancelFunc
}

func (l *lifecycle) init() {
	l.ready = make(chan struct{})
	l.drainReq = make(chan struct{})
	l.quitReq = make(chan struct{})
	l.hardStop, l.cancelHard = context.WithCancel(context.Background())
}

// The states of a Server, as Envoy's admin /ready names them (DRAINED is
// pillion's: drained by Drain, waiting to be stopped).
const (
	StatePreInitializing = "PRE_INITIALIZING"
	StateInitializing    = "INITIALIZING"
	StateLive            = "LIVE"
	StateDraining        = "DRAINING"
	StateDrained         = "DRAINED"
)

// state is Server.State; id is the identity whose SVID readiness needs,
// nil without mTLS.
func (l *lifecycle) state(id Identity) (string, error) {
	switch {
	case l.drained.Load():
		return StateDrained, errors.New("drained: no longer accepting connections")
	case l.closed.Load():
		return StateDraining, errors.New("draining: no longer accepting connections")
	case l.draining.Load():
		return StateDraining, errors.New("draining: new connections are still accepted until the drain period ends, and told to close")
	case !l.listened.Load():
		return StatePreInitializing, errors.New("listeners not open yet")
	}
	if id != nil {
		if err := id.Ready(); err != nil {
			return StateInitializing, fmt.Errorf("no identity: %w", err)
		}
	}
	select {
	case <-l.ready:
		return StateLive, nil
	default:
		return StateInitializing, errors.New("starting")
	}
}

// Listener is one of the proxy's listening sockets.
type Listener struct {
	Direction Direction
	Addr      netip.AddrPort
}

// listening records the listeners opened, once, before the first accept.
func (l *lifecycle) listening(ls []boundListener) {
	for _, x := range ls {
		l.addrs = append(l.addrs, Listener{Direction: x.dir, Addr: x.l.Addr().(*net.TCPAddr).AddrPort()})
	}
	l.listened.Store(true)
}

// listeners is Server.Listeners.
func (l *lifecycle) listeners() []Listener {
	if !l.listened.Load() {
		return nil
	}
	return append([]Listener(nil), l.addrs...)
}

// becomeReady closes l.ready once id has an SVID (at once for a nil id:
// no mTLS), or gives up when ctx ends. Until then the listeners already
// serve, without mTLS: traffic that needs it fails, and STRICT still
// refuses plaintext.
func (l *lifecycle) becomeReady(ctx context.Context, id Identity, log *zap.Logger) {
	if id != nil {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		logged := false
		for err := id.Ready(); err != nil; err = id.Ready() {
			if !logged {
				log.Warn("not ready: waiting for an identity", zap.Error(err))
				logged = true
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
	close(l.ready)
	log.Info("ready")
}

// Drain starts a drain as Run does when its context ends: readiness fails
// at once, the listeners keep accepting for DrainPeriod, then close, and
// open connections get DrainTimeout; the server then stays DRAINED until
// Run's context ends. It is idempotent and safe to call at any time.
func (s *Server) Drain() { s.life.requestDrain() }

// Quit is Drain without the drain period: the listeners close at once, or,
// when a drain period runs, as soon as Quit is called. Open connections
// still get DrainTimeout. It is for a caller that knows nobody will
// connect any more (a Job's application that finished, calling
// /quitquitquit). It is idempotent and safe to call at any time.
func (s *Server) Quit() { s.life.requestQuit() }

// requestDrain is Drain.
func (l *lifecycle) requestDrain() {
	l.drainOne.Do(func() {
		l.draining.Store(true)
		close(l.drainReq)
	})
}

// requestQuit is Quit.
func (l *lifecycle) requestQuit() {
	l.quitOne.Do(func() {
		l.draining.Store(true)
		close(l.quitReq)
	})
}

// waitDrain returns, draining, once ctx ends or Drain or Quit is called.
func (l *lifecycle) waitDrain(ctx context.Context, log *zap.Logger) {
	select {
	case <-ctx.Done():
	case <-l.drainReq:
		log.Info("drain requested")
	case <-l.quitReq:
	}
	l.draining.Store(true)
}

// drainPeriod waits period, or until Quit.
func (l *lifecycle) drainPeriod(period time.Duration, log *zap.Logger) {
	select {
	case <-l.quitReq:
		return
	default:
	}
	if period <= 0 {
		return
	}
	log.Info("drain period started: listeners still accept; inbound HTTP is told to close",
		zap.Duration("period", period))
	t := time.NewTimer(period)
	defer t.Stop()
	select {
	case <-t.C:
		log.Info("drain period ended")
	case <-l.quitReq:
		log.Info("drain period cut short by quit")
	}
}

// drain waits for open connections up to DrainTimeout, then resets them
// (a reset, not a FIN: a cut-off transfer must not look complete).
func (s *Server) drain() {
	defer s.life.cancelHard()
	done := s.admission.allDone()
	// HTTP servers close idle keep-alive connections and send GOAWAY;
	// requests in flight finish.
	shutCtx, cancelShut := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancelShut()
	var shutdowns sync.WaitGroup
	defer shutdowns.Wait()
	for _, hs := range s.http {
		shutdowns.Go(func() { hs.shutdown(shutCtx) })
	}
	if n := s.admission.active.Load(); n > 0 {
		s.log.Info("draining", zap.Int64("connections", n), zap.Duration("timeout", s.cfg.DrainTimeout))
	}
	select {
	case <-done:
		return
	case <-time.After(s.cfg.DrainTimeout):
	}
	s.admission.resetAll(s.log)
	s.life.cancelHard()
	<-done
}

// boundListener is a listening socket and the direction it captures.
type boundListener struct {
	l   *net.TCPListener
	dir Direction
}

// listenAll opens a listener on each direction's port (ports, by
// Direction) at each of hosts, and logs it. An IPv6 host where the network
// namespace has no IPv6 is skipped with a warning. On error none stays
// open.
func listenAll(ports [2]uint16, hosts []netip.Addr, log *zap.Logger) ([]boundListener, error) {
	var ls []boundListener
	for _, dir := range []Direction{Outbound, Inbound} {
		for _, host := range hosts {
			l, err := listen(host, ports[dir])
			if host.Is6() && ipv6Unavailable(err) {
				log.Warn("no IPv6 in this network namespace; listening on IPv4 only",
					zap.Uint16("port", ports[dir]), zap.Error(err))
				continue
			}
			if err != nil {
				closeListeners(ls)
				return nil, fmt.Errorf("proxy: %s listener: %w", dir, err)
			}
			ls = append(ls, boundListener{l, dir})
			log.Info("listening", zap.Stringer("direction", dir), zap.Stringer("addr", l.Addr()))
		}
	}
	return ls, nil
}

func closeListeners(ls []boundListener) {
	for _, x := range ls {
		x.l.Close()
	}
}

func listen(host netip.Addr, port uint16) (*net.TCPListener, error) {
	network := "tcp4"
	if host.Is6() {
		network = "tcp6" // IPV6_V6ONLY: IPv4 has its own listener
	}
	return net.ListenTCP(network, net.TCPAddrFromAddrPort(netip.AddrPortFrom(host, port)))
}

// ipv6Unavailable tells an IPv6 listen error that means "this kernel has no
// IPv6" from a real failure.
func ipv6Unavailable(err error) bool {
	return errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPROTONOSUPPORT)
}
