// Package balance picks, for each request to one destination, the endpoint
// that takes it: Linkerd's balancer (the power of two choices over a
// peak-EWMA latency estimate and the requests outstanding) with Envoy's
// outlier detection (failures in a row eject an endpoint for a while).
//
// # Picking
//
// Pick draws two distinct endpoints at random, each in proportion to its
// Weight, among those Ready, not Terminating and not ejected, and returns
// the one of lower cost:
//
//	cost = max(estimate, LatencyFloor) × (1 + pending/weight)
//
// where pending counts its picks not yet Done. The floor makes latencies
// that differ by no more than noise count as equal (DefaultLatencyFloor
// says why). When the costs are equal it returns the first drawn, so that
// endpoints alike share the traffic in proportion to their weights even
// one request at a time. (Linkerd divides
// the whole cost by the weight instead: the heavier endpoint would then take
// every request while nothing is outstanding.)
//
// # The estimate
//
// Each endpoint keeps a peak-EWMA of the latencies Done reports (a Done
// with upstream.NoLatency, the first request on a new connection, counts
// for load and failures only). A latency above the EWMA replaces it; one
// below is averaged in, the old value weighing exp(-elapsed/Decay) where
// elapsed is the time since the EWMA was last set. A failure counts as at least Config.FailurePenalty. Between
// observations the estimate Pick uses decays toward zero at the same rate
// (as Linkerd's does when it is read): without that, an endpoint that was
// slow once would lose every comparison and never be tried again while the
// others keep up.
//
// An endpoint not yet heard from is estimated at zero (so compared at the
// floor): it is tried at once, and its first response sets the estimate.
// Linkerd instead starts every endpoint at a 30 ms default into which
// responses are averaged; endpoints answering in a millisecond then compare
// guesses for tens of seconds, the first to answer takes most requests, and
// a new endpoint waits as long for its default to decay below warm ones.
// Load still bounds what a new endpoint takes: its pending requests count
// against it as anyone's do.
//
// # Probes
//
// An endpoint that loses Config.ProbeAfter pairs in a row to a cheaper one
// is compared at the floor in its next pair, and the answer it then gives
// replaces its estimate. The estimate forgets over Decay, seconds; without
// probes one slow answer on a busy node would shut an endpoint out that
// long, whatever it does meanwhile, while one request at a time never
// shows it fast again. A slow or failing endpoint is thereby still tried
// about once in ProbeAfter×n/2 requests of n endpoints.
//
// # Outlier detection
//
// Config.Consecutive5xx failures in a row eject an endpoint for
// n×BaseEjection (at most MaxEjection), the n-th time. An ejection ends when
// its time has passed, seen at the next Pick. An ejection that would leave
// more than MaxEjectionPercent of the ready endpoints ejected is not made,
// unless it is the first of two or more. If every ready endpoint is ejected
// anyway, Pick ignores the ejections (Envoy's panic mode) rather than fail.
package balance

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

var _ upstream.Route = (*Balancer)(nil)

// The errors of Pick.
var (
	errNoEndpoints = fmt.Errorf("balance: no endpoints: %w", upstream.ErrNoHealthyUpstream)
	errNoReady     = fmt.Errorf("balance: no ready endpoints: %w", upstream.ErrNoHealthyUpstream)
)

// Balancer is the Route of one destination with many endpoints. It is safe
// for concurrent use. The zero Balancer is not usable: make one with New.
type Balancer struct {
	cfg     Config
	decay   float64 // cfg.Decay in nanoseconds
	floor   float64 // cfg.LatencyFloor in nanoseconds
	now     func() time.Time
	uint64n func(uint64) uint64

	mu     sync.Mutex
	eps    []*endpoint // in the order of the last Update
	byAddr map[netip.AddrPort]*endpoint
	// eligible is what Pick draws from, with cum[i] the sum of the weights
	// of eligible[:i+1]; none is Pick's error when it is empty. recheck is
	// when the first ejection ends (zero: none is ejected), when the
	// eligible endpoints are to be worked out again.
	eligible []*endpoint
	cum      []uint64
	none     error
	recheck  time.Time
}

// New returns a Balancer with no endpoints (Pick fails until Update gives
// some). now is the clock (nil means time.Now) and rnd the randomness
// (nil means math/rand/v2's); the Balancer uses rnd under its lock only, so
// rnd need not be safe for concurrent use, but must not be shared. New
// panics if cfg is not valid: validate it where it is loaded.
func New(cfg Config, now func() time.Time, rnd *rand.Rand) *Balancer {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg = cfg.withDefaults()
	b := &Balancer{
		cfg:     cfg,
		decay:   float64(cfg.Decay),
		floor:   float64(cfg.LatencyFloor),
		now:     now,
		uint64n: rand.Uint64N,
		byAddr:  map[netip.AddrPort]*endpoint{},
		none:    errNoEndpoints,
	}
	if b.now == nil {
		b.now = time.Now
	}
	if rnd != nil {
		b.uint64n = rnd.Uint64N
	}
	return b
}

// Update replaces the endpoints. An endpoint whose Addr was there before
// keeps its latency estimate, pending count, counters and ejection state;
// the others start afresh, not yet heard from. Of endpoints given with the
// same Addr, the first counts. eps is not retained.
func (b *Balancer) Update(eps []Endpoint) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	list := make([]*endpoint, 0, len(eps))
	byAddr := make(map[netip.AddrPort]*endpoint, len(eps))
	for _, ep := range eps {
		if byAddr[ep.Addr] != nil {
			continue
		}
		ep.Weight = max(ep.Weight, 1)
		e := b.byAddr[ep.Addr]
		if e == nil {
			e = &endpoint{at: now}
		}
		e.Endpoint = ep
		byAddr[ep.Addr] = e
		list = append(list, e)
	}
	for addr, e := range b.byAddr {
		if byAddr[addr] == nil {
			e.removed = true
		}
	}
	b.eps, b.byAddr = list, byAddr
	b.rebuild(now)
}

// rebuild works out the eligible endpoints at now, ending the ejections
// whose time has passed.
func (b *Balancer) rebuild(now time.Time) {
	b.eligible, b.cum = b.eligible[:0], b.cum[:0]
	b.recheck = time.Time{}
	ready := 0
	for _, e := range b.eps {
		if !e.takes() {
			continue
		}
		ready++
		if e.ejected(now) {
			if b.recheck.IsZero() || e.ejectedUntil.Before(b.recheck) {
				b.recheck = e.ejectedUntil
			}
			continue
		}
		b.add(e)
	}
	if len(b.eligible) == 0 && ready > 0 {
		// Panic mode: every ready endpoint is ejected.
		for _, e := range b.eps {
			if e.takes() {
				b.add(e)
			}
		}
	}
	switch {
	case len(b.eps) == 0:
		b.none = errNoEndpoints
	case ready == 0:
		b.none = errNoReady
	}
}

func (b *Balancer) add(e *endpoint) {
	sum := uint64(e.Weight)
	if n := len(b.cum); n > 0 {
		sum += b.cum[n-1]
	}
	b.eligible = append(b.eligible, e)
	b.cum = append(b.cum, sum)
}

// Pick returns the endpoint for a request and the Done to call with its
// outcome, or an error wrapping upstream.ErrNoHealthyUpstream (and a nil
// Done) when no endpoint is ready. The pick counts as pending until its
// Done is called; Done must be called once, and a second call does
// nothing. It implements upstream.Route.
func (b *Balancer) Pick() (upstream.Endpoint, upstream.Done, error) {
	now := b.now()
	b.mu.Lock()
	if !b.recheck.IsZero() && !now.Before(b.recheck) {
		b.rebuild(now)
	}
	var e *endpoint
	switch len(b.eligible) {
	case 0:
		err := b.none
		b.mu.Unlock()
		return upstream.Endpoint{}, nil, err
	case 1:
		e = b.eligible[0]
	default:
		i, j := b.draw()
		e = b.eligible[i]
		o := b.eligible[j]
		ce, co := e.cost(now, b.decay, b.floor, b.cfg.ProbeAfter), o.cost(now, b.decay, b.floor, b.cfg.ProbeAfter)
		if co < ce {
			e, o, ce, co = o, e, co, ce
		}
		if ce < co {
			o.lost++
		}
	}
	probe := e.lost >= b.cfg.ProbeAfter
	e.lost = 0
	e.pending++
	e.requests++
	ep := e.Endpoint.Endpoint
	b.mu.Unlock()
	t := &ticket{b: b, e: e, probe: probe}
	return ep, t.done, nil
}

// draw returns the indexes in eligible of two distinct endpoints drawn at
// random in proportion to their weights. len(eligible) must be 2 or more.
func (b *Balancer) draw() (i, j int) {
	total := b.cum[len(b.cum)-1]
	i = b.search(b.uint64n(total))
	// The second among the others: draw over the total less i's weight,
	// skipping i's range of numbers.
	lo, w := uint64(0), uint64(b.eligible[i].Weight)
	if i > 0 {
		lo = b.cum[i-1]
	}
	r := b.uint64n(total - w)
	if r >= lo {
		r += w
	}
	return i, b.search(r)
}

// search returns the index of the endpoint that r, in [0, total weight),
// falls on: the first i with r < cum[i].
func (b *Balancer) search(r uint64) int {
	lo, hi := 0, len(b.cum)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r < b.cum[m] {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// ticket is the Done of one pick.
type ticket struct {
	b      *Balancer
	e      *endpoint
	probe  bool // the endpoint won its pair as a probe
	called bool // guarded by b.mu
}

// done settles the pick: it is no longer pending, its latency is observed
// and it counts toward outlier detection. A second call does nothing.
func (t *ticket) done(latency time.Duration, failed bool) {
	b, e := t.b, t.e
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.called {
		return
	}
	t.called = true
	e.pending--
	if failed {
		e.failures++
		latency = max(latency, b.cfg.FailurePenalty)
	}
	if latency != upstream.NoLatency {
		e.observe(now, latency, b.decay, t.probe)
	}
	if e.removed || !e.takes() || e.ejected(now) {
		return
	}
	if !failed {
		e.consecutive = 0
		return
	}
	e.consecutive++
	if e.consecutive >= b.cfg.Consecutive5xx && b.mayEject(now) {
		e.eject(now, &b.cfg)
		b.rebuild(now)
	}
}

// mayEject says whether one more ready endpoint may be ejected at now.
func (b *Balancer) mayEject(now time.Time) bool {
	ready, ejected := 0, 0
	for _, e := range b.eps {
		if e.takes() {
			ready++
			if e.ejected(now) {
				ejected++
			}
		}
	}
	return (ejected+1)*100 <= b.cfg.MaxEjectionPercent*ready || (ejected == 0 && ready >= 2)
}

// EndpointStats is the state of one endpoint, for the admin page.
type EndpointStats struct {
	// Endpoint is as last given to Update, Weight 0 reported as 1.
	Endpoint
	// EWMA is the latency estimate Pick would use at the time of the
	// snapshot.
	EWMA time.Duration
	// Pending counts picks whose Done has not been called.
	Pending int
	// Requests counts picks, Failures the Dones that reported a failure,
	// since the endpoint was added.
	Requests, Failures uint64
	// ConsecutiveFailures counts failures since the last success or
	// ejection.
	ConsecutiveFailures int
	// Ejected says whether the endpoint is ejected; EjectedUntil is when
	// its current or last ejection ends (zero if it never was), Ejections
	// that ejection's multiplier (of BaseEjection).
	Ejected      bool
	EjectedUntil time.Time
	Ejections    int
}

// Snapshot returns the state of each endpoint, in the order of the last
// Update. It allocates a new slice on each call.
func (b *Balancer) Snapshot() []EndpointStats {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]EndpointStats, len(b.eps))
	for i, e := range b.eps {
		out[i] = EndpointStats{
			Endpoint:            e.Endpoint,
			EWMA:                time.Duration(e.estimate(now, b.decay)),
			Pending:             e.pending,
			Requests:            e.requests,
			Failures:            e.failures,
			ConsecutiveFailures: e.consecutive,
			Ejected:             e.ejected(now),
			EjectedUntil:        e.ejectedUntil,
			Ejections:           e.ejections,
		}
	}
	return out
}
