// Package resolve is the sidecar's client of `pillion discovery`: it asks,
// on demand, what stands behind each destination the application connects
// to (the first time the sidecar sees it), keeps one stream open on which
// discovery sends every change, and holds the answers. It holds only the
// destinations this sidecar used, so its memory never grows with the
// cluster.
//
// While discovery is unreachable the answers held keep serving; the stream
// is retried with a jittered exponential back-off, and once it is back
// every held destination is asked again, so that a change made meanwhile
// is picked up. A destination never answered is forwarded to its original
// destination (Resolve returns nil), as without discovery.
package resolve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/proxy/ratelog"
)

// Defaults for Config.
const (
	// DefaultFirstAnswer is how long the first connection to a destination
	// waits for discovery's answer while the stream is up; discovery
	// answers from memory, in well under a millisecond plus the round
	// trip, so this is only reached when it is overloaded.
	DefaultFirstAnswer = time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait between
	// attempts to open the stream.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// Config is what a Resolver needs.
type Config struct {
	// Conn is the gRPC connection to discovery (mTLS, built by the
	// caller). Required; the caller closes it after Run returns.
	Conn grpc.ClientConnInterface
	// Identity is our own SVID's source: answers naming identities of
	// another trust domain are refused. Required.
	Identity x509svid.Source
	// Log is where the stream's state changes and refused answers go.
	Log *zap.Logger
	// FirstAnswer, MinBackoff, MaxBackoff: zero means the default.
	FirstAnswer, MinBackoff, MaxBackoff time.Duration
}

// Resolver holds the destinations this sidecar asked about. Create it with
// New and run it with Run. It is safe for concurrent use.
type Resolver struct {
	cfg    Config
	client discoveryv1.DiscoveryClient
	stats  Stats

	dests sync.Map // netip.AddrPort → *entry

	mu     sync.Mutex
	unsent []netip.AddrPort // subscriptions not yet sent on the current stream
	wake   chan struct{}    // a subscription is waiting to be sent

	up atomic.Bool // a stream is open
	// settled: a stream opened once, or a lookup waited FirstAnswer for
	// one in vain (the stream waits for its connection, which may never
	// come, or its attempts fail). Until then first lookups wait for their
	// answer, so that a sidecar's first requests are not sent to a
	// Service's virtual IP while its stream is still connecting.
	settled atomic.Bool
	// warnTimeout bounds the lines of first lookups that gave up waiting.
	warnTimeout ratelog.EverySecond
}

// entry is one destination asked about.
type entry struct {
	state    atomic.Pointer[State]
	answered chan struct{} // closed at the first answer
	once     sync.Once
}

func (e *entry) set(st *State) {
	e.state.Store(st)
	e.once.Do(func() { close(e.answered) })
}

// Stats counts what the resolver did. The fields are safe to read at any
// time.
type Stats struct {
	Connects, Disconnects atomic.Int64 // streams opened and lost
	Updates               atomic.Int64 // answers taken
	Invalid               atomic.Int64 // answers refused as invalid
	FirstAnswerTimeouts   atomic.Int64 // first lookups that gave up waiting
}

// New returns a Resolver for cfg.
func New(cfg Config) (*Resolver, error) {
	if cfg.Conn == nil || cfg.Identity == nil {
		return nil, errors.New("resolve: a connection to discovery and an identity are required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	cfg.FirstAnswer = cmp.Or(cfg.FirstAnswer, DefaultFirstAnswer)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	return &Resolver{cfg: cfg, client: discoveryv1.NewDiscoveryClient(cfg.Conn), wake: make(chan struct{}, 1)}, nil
}

// Stats returns the resolver's counters.
func (r *Resolver) Stats() *Stats { return &r.stats }

// Connected reports whether the stream to discovery is open.
func (r *Resolver) Connected() bool { return r.up.Load() }

// Resolve returns what discovery said of dst, or nil when it has said
// nothing yet: the caller then forwards to dst itself. The first call for
// a destination subscribes to it and, while the stream is up (or still
// opening for the first time), waits up to Config.FirstAnswer (or until
// ctx ends) for the answer; while discovery is unreachable it returns nil
// at once and the subscription is sent once the stream is back.
func (r *Resolver) Resolve(ctx context.Context, dst netip.AddrPort) *State {
	if v, ok := r.dests.Load(dst); ok {
		return v.(*entry).state.Load()
	}
	v, loaded := r.dests.LoadOrStore(dst, &entry{answered: make(chan struct{})})
	e := v.(*entry)
	if !loaded {
		r.mu.Lock()
		r.unsent = append(r.unsent, dst)
		r.mu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	if !r.up.Load() && r.settled.Load() {
		r.cfg.Log.Debug("discovery unreachable: not waiting for its answer", zap.Stringer("dst", dst))
		return e.state.Load()
	}
	t := time.NewTimer(r.cfg.FirstAnswer)
	defer t.Stop()
	select {
	case <-e.answered:
	case <-ctx.Done():
		r.cfg.Log.Debug("stopped waiting for discovery's answer", zap.Stringer("dst", dst), zap.Error(ctx.Err()))
	case <-t.C:
		r.stats.FirstAnswerTimeouts.Add(1)
		up := r.up.Load()
		if !up {
			r.settled.Store(true) // the first stream is taking long: wait no more
		}
		if ce, n := r.warnTimeout.Check(r.cfg.Log, zap.InfoLevel, "no answer from discovery in time: forwarding to the original destination"); ce != nil {
			ce.Write(zap.Stringer("dst", dst), zap.Duration("waited", r.cfg.FirstAnswer), zap.Bool("stream_open", up), zap.Int64("suppressed", n))
		}
	}
	return e.state.Load()
}

// Destinations returns every destination asked about with what discovery
// said of it (nil when nothing yet).
func (r *Resolver) Destinations() map[netip.AddrPort]*State {
	out := map[netip.AddrPort]*State{}
	r.dests.Range(func(k, v any) bool {
		out[k.(netip.AddrPort)] = v.(*entry).state.Load()
		return true
	})
	return out
}

// Run keeps a stream to discovery open until ctx ends, reopening it with
// back-off when it fails.
func (r *Resolver) Run(ctx context.Context) {
	// The stream is mTLS: there is no point trying before we have an SVID
	// (first lookups meanwhile wait, up to FirstAnswer each).
	for _, err := r.cfg.Identity.GetX509SVID(); err != nil; _, err = r.cfg.Identity.GetX509SVID() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	backoff := r.cfg.MinBackoff
	for ctx.Err() == nil {
		// A stream that failed before it opened settles nothing: first
		// lookups go on waiting (up to FirstAnswer) for the retry to
		// answer, rather than send a sidecar's first requests to a
		// Service's virtual IP because one attempt was refused.
		opened, err := r.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if opened {
			backoff = r.cfg.MinBackoff
		}
		// Full jitter over [backoff/2, backoff): sidecars that lost the
		// same discovery replica do not all come back at once.
		wait := backoff/2 + rand.N(backoff/2+1)
		r.cfg.Log.Warn("discovery stream failed: serving from the destinations held; retrying",
			zap.Error(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, r.cfg.MaxBackoff)
	}
}

// stream runs one stream until it fails; opened says whether it got as
// far as an answer (so that the back-off starts again).
func (r *Resolver) stream(ctx context.Context) (opened bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stream waits for the connection to be ready: gRPC's own back-off
	// paces the reconnects (failing fast instead would put the resolver's
	// back-off on top of it, and find discovery back up to both later).
	s, err := r.client.Watch(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, fmt.Errorf("resolve: open stream: %w", err)
	}
	// Everything held is asked again: the answers may have changed while
	// the stream was down.
	r.mu.Lock()
	r.unsent = r.unsent[:0]
	r.dests.Range(func(k, _ any) bool {
		r.unsent = append(r.unsent, k.(netip.AddrPort))
		return true
	})
	r.mu.Unlock()
	sendErr := make(chan error, 1)
	go func() { sendErr <- r.send(ctx, s) }()
	first := true
	for {
		m, err := s.Recv()
		if err != nil {
			if !first {
				r.up.Store(false)
				r.stats.Disconnects.Add(1)
			}
			cancel()
			if se := <-sendErr; se != nil && !errors.Is(se, context.Canceled) {
				err = se
			}
			return !first, fmt.Errorf("resolve: stream: %w", err)
		}
		if first {
			first = false
			r.up.Store(true)
			r.settled.Store(true)
			r.stats.Connects.Add(1)
			r.cfg.Log.Info("discovery stream open")
		}
		r.take(m)
	}
}

// send sends the waiting subscriptions on s until ctx ends. The stream
// counts as up only once discovery answered, so a first lookup made while
// it opens does not wait: it is sent here and answered soon after.
func (r *Resolver) send(ctx context.Context, s grpc.BidiStreamingClient[discoveryv1.WatchRequest, discoveryv1.WatchResponse]) error {
	for {
		r.mu.Lock()
		subs := make([]string, len(r.unsent))
		for i, d := range r.unsent {
			subs[i] = d.String()
		}
		r.unsent = r.unsent[:0]
		r.mu.Unlock()
		if len(subs) > 0 {
			if err := s.Send(&discoveryv1.WatchRequest{Subscribe: subs}); err != nil {
				return err
			}
			if ce := r.cfg.Log.Check(zap.DebugLevel, "subscribed"); ce != nil {
				ce.Write(zap.Strings("destinations", subs))
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		}
	}
}

// take applies one answer.
func (r *Resolver) take(m *discoveryv1.WatchResponse) {
	own, err := r.cfg.Identity.GetX509SVID()
	var td spiffeid.TrustDomain
	if err == nil {
		td = own.ID.TrustDomain()
	}
	dst, st, err := decode(td, m)
	if err != nil {
		r.stats.Invalid.Add(1)
		r.cfg.Log.Warn("discovery answer refused", zap.Error(err))
		return
	}
	v, ok := r.dests.Load(dst)
	if !ok {
		return // not asked for (any more)
	}
	if st.Err != nil {
		r.stats.Invalid.Add(1)
		r.cfg.Log.Warn("discovery answer refused: the destination has no endpoint until a valid one comes",
			zap.Stringer("dst", dst), zap.Error(st.Err))
	}
	if st.Dropped != nil {
		r.cfg.Log.Warn("discovery answer: a telemetry field left out (its labels read unknown)",
			zap.Stringer("dst", dst), zap.Error(st.Dropped))
	}
	r.stats.Updates.Add(1)
	if ce := r.cfg.Log.Check(zap.DebugLevel, "discovery answer"); ce != nil {
		ce.Write(zap.Stringer("dst", dst), zap.Stringer("kind", st.Kind), zap.String("service", st.Service.String()),
			zap.Int("endpoints", len(st.Endpoints)))
	}
	v.(*entry).set(st)
}
