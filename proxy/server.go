package proxy

import (
	"context"
	"errors"
	"fmt"
	"github.com/pillionmesh/pillion/proxy/ratelog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/proxy/pool"
	"github.com/pillionmesh/pillion/proxy/tracing"
	"github.com/pillionmesh/pillion/redirect"
)

// Server is the sidecar's TCP data path. Create it with New and start it
// with Run; a Server runs once.
//
// It owns its parts, each with its own state, and passes each connection
// through them (conn.go): admission (the connection limit and the open
// sockets), the detector (loops and protocol), the routes (which endpoint)
// and the dialer (plain or mTLS), then the HTTP servers of its direction
// or an opaque relay. The lifecycle holds its state from New to Run's end.
// ARCHITECTURE.md, "The proxy package in parts", has the map.
type Server struct {
	cfg   Config
	log   *zap.Logger
	stats Stats

	// origDst is the kernel's answer, replaceable in tests.
	origDst func(*net.TCPConn) (netip.AddrPort, error)
	// bindV4 and bindV6 are the addresses listened on, loopback in tests.
	bindV4, bindV6 netip.Addr

	life       lifecycle      // the state, drain and quit (lifecycle.go)
	admission  admission      // the connection limit and the open sockets (admission.go)
	handshakes *handshakes    // bounds the mTLS handshakes in flight, both directions (handshake.go)
	detector   detector       // loops and protocols (detect.go)
	routes     routes         // the endpoint of each connection and request (route.go)
	dialer     dialer         // connects upstream (dial.go)
	http       [2]*httpServer // by Direction; set by Run (http.go)
	// warnHeaderTimeout lets the warning of HTTP clients too slow with
	// headers through at most once a second.
	warnHeaderTimeout ratelog.EverySecond

	// pools are the upstream pools by Direction: outbound to destinations
	// and peer sidecars, inbound to the application. They are apart
	// because the application's address (the pod IP, dialled from
	// 127.0.0.6) is also an outbound destination when the application
	// calls its own pod IP, and pools are keyed by address.
	pools  [2]*pool.Pools
	bufs   bufpool.Pool // the copy buffers of relays and of the pools' request bodies
	mesh   *meshTLS     // nil without an identity
	config atomic.Pointer[running]
	// applyMu orders Apply calls; tracingStats outlive the Tracers that
	// reloads replace (spans.go).
	applyMu      sync.Mutex
	tracingStats tracing.Stats

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
	s := &Server{
		cfg:        cfg,
		log:        log,
		origDst:    redirect.OriginalDst,
		bindV4:     netip.IPv4Unspecified(),
		bindV6:     netip.IPv6Unspecified(),
		handshakes: newHandshakes(cfg.MaxHandshakes),
	}
	s.life.init()
	if cfg.Identity != nil {
		s.mesh = newMeshTLS(cfg.Identity)
	}
	s.admission = admission{max: cfg.MaxConnections, conns: make(map[*net.TCPConn]struct{})}
	s.routes = routes{cfg: cfg.Balance, now: time.Now, discovery: cfg.Discovery, mtls: s.mesh != nil}
	s.detector = detector{
		cfg:        &s.cfg,
		localAddrs: net.InterfaceAddrs,
		mtls:       s.mesh != nil,
		routes:     &s.routes,
		ctx:        s.life.hardStop,
		log:        log,
	}
	s.dialer = dialer{
		timeout:    cfg.DialTimeout,
		mesh:       s.mesh,
		handshakes: s.handshakes,
		stats:      &s.stats.Dir[Outbound],
		log:        log,
	}
	pc := cfg.Pool
	pc.DialTimeout, pc.Dial, pc.Buffers = cfg.DialTimeout, s.dialer.poolDial, &s.bufs
	s.pools[Outbound] = pool.New(pc)
	pc.Dial = s.dialer.appPoolDial
	s.pools[Inbound] = pool.New(pc)
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
func (s *Server) Ready() <-chan struct{} { return s.life.ready }

// State returns the server's state, and unless it is LIVE, why it is not
// ready. It is live: an identity that lost its SVID (expired files) makes
// a LIVE server not ready again.
func (s *Server) State() (string, error) { return s.life.state(s.identity()) }

// Listeners returns the listeners Run opened; none before.
func (s *Server) Listeners() []Listener { return s.life.listeners() }

// identity is the identity whose SVID the server needs to be ready, nil
// without mTLS.
func (s *Server) identity() Identity {
	if s.mesh == nil {
		return nil
	}
	return s.mesh.id
}

// Run listens on the outbound and inbound ports, IPv4 and (where the
// namespace has it) IPv6, and proxies connections until ctx ends (or Drain
// or Quit is called). Then it drains: readiness fails at once, the
// listeners keep accepting for DrainPeriod (none after Quit), then close;
// open connections get up to DrainTimeout to end and those left are reset.
// Run returns once that is done and ctx has ended. It returns an error only
// if a listener cannot be opened. Run must be called once.
func (s *Server) Run(ctx context.Context) error {
	ls, err := listenAll([2]uint16{Outbound: s.cfg.OutboundPort, Inbound: s.cfg.InboundPort},
		[]netip.Addr{s.bindV4, s.bindV6}, s.log)
	if err != nil {
		return err
	}
	for _, d := range []Direction{Outbound, Inbound} {
		s.http[d] = newHTTPServer(s.requestHandler(d), s.cfg.HeaderTimeout, s.life.hardStop, s.log)
	}
	var accepting sync.WaitGroup
	for _, x := range ls {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			s.accept(x.l, x.dir)
		}()
	}
	s.life.listening(ls)
	go s.life.becomeReady(ctx, s.identity(), s.log)
	s.life.waitDrain(ctx, s.log)
	s.life.drainPeriod(s.cfg.DrainPeriod, s.log)
	closeListeners(ls)
	s.life.closed.Store(true)
	s.log.Info("listeners closed: new connections are refused")
	accepting.Wait()
	s.drain()
	s.closeIdlePools()
	s.flushTracing()
	s.life.drained.Store(true)
	<-ctx.Done() // after Drain, stay until stopped
	return nil
}

// accept accepts l's connections, of direction dir, until l is closed,
// and serves each that admission lets in on a goroutine of its own.
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
		if !s.admission.admit(c, dir, st, s.log) {
			continue
		}
		go func() {
			defer s.admission.leave(c)
			s.handle(c, dir)
		}()
	}
}
