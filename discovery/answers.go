package discovery

import (
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// answers is the Server's table of the destinations some stream
// subscribes to, each with its current answer, shared by every stream
// that holds it: however many sidecars watch a Service, a change to it is
// looked up once, compared once, and the same message is sent to each.
//
// An answer is computed lazily, by the first stream that asks after it
// was invalidated, while the others that ask meanwhile wait for it. Its
// state pointer changes only when its content does, so a stream tells a
// change from an unchanged recomputation by comparing pointers.
//
// Invalidation follows the topics each answer read (lookup's
// dependencies): an informer event marks the answers that read one of
// its topics as invalid and tells their holders. An event that arrives
// while an answer is being computed is remembered for it, so that an
// answer computed from a store that changed under it is not kept as
// valid. It is safe for concurrent use.
type answers struct {
	lookup  func(netip.AddrPort) (*discoveryv1.Destination, []topic) // Index.lookup
	lookups prometheus.Counter

	mu       sync.Mutex
	entries  map[netip.AddrPort]*answer
	byTopic  map[topic]map[*answer]struct{}
	inflight map[*answer]struct{}
}

// An answer is one destination's current state and who holds it.
type answer struct {
	dst     netip.AddrPort           // normalized: unmapped, no zone
	holders map[*stream]int          // streams holding it, with their subscriptions to it
	state   *discoveryv1.Destination // canonical: replaced only by a state that differs
	deps    []topic
	valid   bool
	// computing is closed when the computation in flight ends; nil when
	// none is.
	computing chan struct{}
	// raced holds the topics of events that arrived during the
	// computation in flight.
	raced map[topic]struct{}
}

func newAnswers(lookup func(netip.AddrPort) (*discoveryv1.Destination, []topic), lookups prometheus.Counter) *answers {
	return &answers{
		lookup: lookup, lookups: lookups,
		entries: make(map[netip.AddrPort]*answer), byTopic: make(map[topic]map[*answer]struct{}),
		inflight: make(map[*answer]struct{}),
	}
}

// acquire makes st a holder of dst's answer; release undoes it.
func (a *answers) acquire(dst netip.AddrPort, st *stream) *answer {
	dst = netip.AddrPortFrom(dst.Addr().Unmap().WithZone(""), dst.Port())
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.entries[dst]
	if e == nil {
		e = &answer{dst: dst, holders: make(map[*stream]int)}
		a.entries[dst] = e
	}
	e.holders[st]++
	return e
}

// release drops one of st's holds on e; the last hold of the last holder
// forgets the answer.
func (a *answers) release(e *answer, st *stream) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e.holders[st]--; e.holders[st] > 0 {
		return
	}
	delete(e.holders, st)
	if len(e.holders) > 0 {
		return
	}
	a.setDeps(e, nil)
	delete(a.entries, e.dst)
}

// get returns e's current state, computing it if it is not valid (or
// waiting for the computation already in flight).
func (a *answers) get(e *answer) *discoveryv1.Destination {
	a.mu.Lock()
	for !e.valid && e.computing != nil {
		ch := e.computing
		a.mu.Unlock()
		<-ch
		a.mu.Lock()
	}
	if e.valid {
		s := e.state
		a.mu.Unlock()
		return s
	}
	e.computing = make(chan struct{})
	a.inflight[e] = struct{}{}
	prev := e.state // only this computation changes it
	a.mu.Unlock()

	state, deps := a.lookup(e.dst)
	a.lookups.Inc()
	if prev != nil && proto.Equal(prev, state) {
		state = prev
	}

	a.mu.Lock()
	delete(a.inflight, e)
	raced := false
	for _, t := range deps {
		if _, ok := e.raced[t]; ok {
			raced = true
			break
		}
	}
	e.raced = nil
	a.setDeps(e, deps)
	e.state, e.deps, e.valid = state, deps, !raced
	close(e.computing)
	e.computing = nil
	var holders []*stream
	if raced {
		holders = holdersOf(e)
	}
	a.mu.Unlock()
	// The store changed under this computation: its holders compute
	// it again.
	for _, st := range holders {
		st.dirty(e, time.Now())
	}
	return state
}

// invalidate marks the answers that read one of topics as invalid and
// tells their holders; at is when the event arrived.
func (a *answers) invalidate(topics []topic, at time.Time) {
	type note struct {
		st *stream
		e  *answer
	}
	var notes []note
	a.mu.Lock()
	for _, t := range topics {
		for e := range a.byTopic[t] {
			e.valid = false
			for st := range e.holders {
				notes = append(notes, note{st, e})
			}
		}
	}
	for e := range a.inflight {
		if e.raced == nil {
			e.raced = make(map[topic]struct{}, len(topics))
		}
		for _, t := range topics {
			e.raced[t] = struct{}{}
		}
	}
	a.mu.Unlock()
	for _, n := range notes {
		n.st.dirty(n.e, at)
	}
}

// setDeps replaces the topics e is indexed under. a.mu is held.
func (a *answers) setDeps(e *answer, deps []topic) {
	for _, t := range e.deps {
		if set := a.byTopic[t]; set != nil {
			delete(set, e)
			if len(set) == 0 {
				delete(a.byTopic, t)
			}
		}
	}
	for _, t := range deps {
		set := a.byTopic[t]
		if set == nil {
			set = make(map[*answer]struct{})
			a.byTopic[t] = set
		}
		set[e] = struct{}{}
	}
	e.deps = deps
}

// holdersOf returns e's holders. a.mu is held.
func holdersOf(e *answer) []*stream {
	hs := make([]*stream, 0, len(e.holders))
	for st := range e.holders {
		hs = append(hs, st)
	}
	return hs
}
