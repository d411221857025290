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

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/proxy/pool"
	"github.com/pillionmesh/pillion/proxy/relay"
	"github.com/pillionmesh/pillion/proxy/tracing"
	"github.com/pillionmesh/pillion/redirect"
)

// Server is the sidecar's TCP data path. Create it with New and start it
// with Run; a Server runs once.
type Server struct {
	cfg   Config
	log   *zap.Logger
	stats Stats

	// origDst and localAddrs are the kernel's answers, replaceable in tests.
	origDst    func(*net.TCPConn) (netip.AddrPort, error)
	localAddrs func() ([]net.Addr, error)
	// bindV4 and bindV6 are the addresses listened on, loopback in tests.
	bindV4, bindV6 netip.Addr

	active     atomic.Int64 // both directions, for MaxConnections
	handshakes *handshakes  // bounds the mTLS handshakes in flight
	// The warnings of a flood, each at most once a second: connections
	// refused over MaxConnections, HTTP clients too slow with headers.
	warnOverLimit, warnHeaderTimeout everySecond
	wg                               sync.WaitGroup

	// hardStop is cancelled when the drain time-out passes: dials in flight
	// give up.
	hardStop   context.Context
	cancelHard context.CancelFunc

	mu      sync.Mutex
	conns   map[*net.TCPConn]struct{} // open sockets, both ends, for the final reset
	closing bool                      // the final reset has run: refuse new sockets

	ready    chan struct{} // closed once LIVE
	listened atomic.Bool   // the listeners are open
	addrs    []Listener    // the listeners, set by Run before listened
	draining atomic.Bool   // Drain or Quit was called, or Run's context ended
	closed   atomic.Bool   // the drain period is over: the listeners are closed
	drained  atomic.Bool   // the drain is over
	drainReq chan struct{} // closed by Drain
	drainOne sync.Once
	quitReq  chan struct{} // closed by Quit
	quitOne  sync.Once

	// pools are the upstream pools by Direction: outbound to destinations
	// and peer sidecars, inbound to the application. They are apart
	// because the application's address (the pod IP, dialled from
	// 127.0.0.6) is also an outbound destination when the application
	// calls its own pod IP, and pools are keyed by address.
	pools  [2]*pool.Pools
	bufs   bufpool.Pool // the copy buffers of relays and of the pools' request bodies
	routes routes       // the balancers of discovered destinations
	mesh   *meshTLS     // nil without an identity
	config atomic.Pointer[running]
	// applyMu orders Apply calls; tracingStats outlive the Tracers that
	// reloads replace (spans.go).
	applyMu      sync.Mutex
	tracingStats tracing.Stats
	http         [2]*httpServer // by Direction; set by Run

	metrics *requestMetrics       // nil without Config.Registerer
	istio   *istiometrics.Metrics // Istio's standard metrics; nil without Config.Registerer
	idCache atomic.Pointer[cachedID]
}

// New returns a Server for cfg, which must be valid, with the default
// filter chains (the router alone) until Apply is called. log must not be
// nil.
func New(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	hardStop, cancelHard := context.WithCancel(context.Background())
	s := &Server{
		cfg:        cfg,
		hardStop:   hardStop,
		cancelHard: cancelHard,
		log:        log,
		origDst:    redirect.OriginalDst,
		localAddrs: net.InterfaceAddrs,
		bindV4:     netip.IPv4Unspecified(),
		bindV6:     netip.IPv6Unspecified(),
		conns:      make(map[*net.TCPConn]struct{}),
		handshakes: newHandshakes(cfg.MaxHandshakes),
		ready:      make(chan struct{}),
		drainReq:   make(chan struct{}),
		quitReq:    make(chan struct{}),
	}
	if cfg.Identity != nil {
		s.mesh = newMeshTLS(cfg.Identity)
	}
	pc := cfg.Pool
	pc.DialTimeout, pc.Dial, pc.Buffers = cfg.DialTimeout, s.poolDial, &s.bufs
	s.pools[Outbound] = pool.New(pc)
	pc.Dial = s.appPoolDial
	s.pools[Inbound] = pool.New(pc)
	s.routes = routes{cfg: cfg.Balance, now: time.Now}
	if err := s.registerMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(tracing.NewCollector(&s.tracingStats)); err != nil {
			return nil, fmt.Errorf("proxy: metrics: %w", err)
		}
	}
	defaults, err := configfile.Parse(nil, builtin.Registry())
	if err == nil {
		err = s.Apply(defaults)
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: default config: %w", err)
	}
	return s, nil
}

// Stats returns the server's live counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Ready is closed once every listener is open and, with mTLS, the
// identity has an SVID. It is never closed if Run fails to open the
// listeners.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// The states of a Server, as Envoy's admin /ready names them (DRAINED is
// pillion's: drained by Drain, waiting to be stopped).
const (
	StatePreInitializing = "PRE_INITIALIZING"
	StateInitializing    = "INITIALIZING"
	StateLive            = "LIVE"
	StateDraining        = "DRAINING"
	StateDrained         = "DRAINED"
)

// State returns the server's state, and unless it is LIVE, why it is not
// ready. It is live: an identity that lost its SVID (expired files) makes
// a LIVE server not ready again.
func (s *Server) State() (string, error) {
	switch {
	case s.drained.Load():
		return StateDrained, errors.New("drained: no longer accepting connections")
	case s.closed.Load():
		return StateDraining, errors.New("draining: no longer accepting connections")
	case s.draining.Load():
		return StateDraining, errors.New("draining: new connections are still accepted until the drain period ends, and told to close")
	case !s.listened.Load():
		return StatePreInitializing, errors.New("listeners not open yet")
	}
	if s.mesh != nil {
		if err := s.mesh.id.Ready(); err != nil {
			return StateInitializing, fmt.Errorf("no identity: %w", err)
		}
	}
	select {
	case <-s.ready:
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

// Listeners returns the listeners Run opened; none before.
func (s *Server) Listeners() []Listener {
	if !s.listened.Load() {
		return nil
	}
	return append([]Listener(nil), s.addrs...)
}

// becomeReady closes s.ready once the identity has an SVID (at once
// without mTLS), or gives up when ctx ends. Until then the listeners
// already serve, without mTLS: traffic that needs it fails, and STRICT
// still refuses plaintext.
func (s *Server) becomeReady(ctx context.Context) {
	if s.mesh != nil {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		logged := false
		for err := s.mesh.id.Ready(); err != nil; err = s.mesh.id.Ready() {
			if !logged {
				s.log.Warn("not ready: waiting for an identity", zap.Error(err))
				logged = true
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
	close(s.ready)
	s.log.Info("ready")
}

// Run listens on the outbound and inbound ports, IPv4 and (where the
// namespace has it) IPv6, and proxies connections until ctx ends (or Drain
// or Quit is called). Then it drains: readiness fails at once, the
// listeners keep accepting for DrainPeriod (none after Quit), then close;
// open connections get up to DrainTimeout to end and those left are reset.
// Run returns once that is done and ctx has ended. It returns an error only
// if a listener cannot be opened. Run must be called once.
func (s *Server) Run(ctx context.Context) error {
	type lis struct {
		l   *net.TCPListener
		dir Direction
	}
	var ls []lis
	closeAll := func() {
		for _, x := range ls {
			x.l.Close()
		}
	}
	for _, p := range []struct {
		port uint16
		dir  Direction
	}{{s.cfg.OutboundPort, Outbound}, {s.cfg.InboundPort, Inbound}} {
		for _, host := range []netip.Addr{s.bindV4, s.bindV6} {
			l, err := listen(host, p.port)
			if host.Is6() && ipv6Unavailable(err) {
				s.log.Warn("no IPv6 in this network namespace; listening on IPv4 only",
					zap.Uint16("port", p.port), zap.Error(err))
				continue
			}
			if err != nil {
				closeAll()
				return fmt.Errorf("proxy: %s listener: %w", p.dir, err)
			}
			ls = append(ls, lis{l, p.dir})
			s.addrs = append(s.addrs, Listener{Direction: p.dir, Addr: l.Addr().(*net.TCPAddr).AddrPort()})
			s.log.Info("listening", zap.Stringer("direction", p.dir), zap.Stringer("addr", l.Addr()))
		}
	}
	for _, d := range []Direction{Outbound, Inbound} {
		s.http[d] = s.newHTTPServer(d)
	}
	var accepting sync.WaitGroup
	for _, x := range ls {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			s.accept(x.l, x.dir)
		}()
	}
	s.listened.Store(true)
	go s.becomeReady(ctx)
	select {
	case <-ctx.Done():
	case <-s.drainReq:
		s.log.Info("drain requested")
	case <-s.quitReq:
	}
	s.draining.Store(true)
	s.drainPeriod()
	closeAll()
	s.closed.Store(true)
	s.log.Info("listeners closed: new connections are refused")
	accepting.Wait()
	s.drain()
	s.closeIdlePools()
	s.flushTracing()
	s.drained.Store(true)
	<-ctx.Done() // after Drain, stay until stopped
	return nil
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

func (s *Server) accept(l *net.TCPListener, dir Direction) {
	var backoff time.Duration
	for {
		c, err := l.AcceptTCP()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors and the like: wait and try again.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", zap.Stringer("direction", dir), zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		st := &s.stats.Dir[dir]
		st.Accepted.Add(1)
		if s.active.Add(1) > int64(s.cfg.MaxConnections) {
			s.active.Add(-1)
			st.OverLimit.Add(1)
			if ce, n := s.warnOverLimit.check(s.log, zap.WarnLevel, "connection limit reached: refusing"); ce != nil {
				ce.Write(zap.Stringer("direction", dir), zap.Stringer("src", c.RemoteAddr()),
					zap.Int("max_connections", s.cfg.MaxConnections), zap.Int64("suppressed", n))
			}
			relay.Reset(c)
			continue
		}
		if !s.track(c) {
			s.active.Add(-1)
			relay.Reset(c)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.active.Add(-1)
			defer s.untrack(c)
			s.handle(c, dir)
		}()
	}
}

// track records c as open, so a drain time-out can reset it. It returns
// false, and does not record c, once that final reset has run: the caller
// must then reset c itself.
func (s *Server) track(c *net.TCPConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// untrack forgets c.
func (s *Server) untrack(c *net.TCPConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}
