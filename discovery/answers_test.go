package discovery

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// fakeLookup answers from a zone that the test changes, depending on one
// topic, and counts its calls; during may simulate an event arriving
// while a lookup runs.
type fakeLookup struct {
	zone   string
	calls  int
	during func()
}

var fakeTopic = topic{topicService, "shop/web"}

func (f *fakeLookup) lookup(netip.AddrPort) (*discoveryv1.Destination, []topic) {
	f.calls++
	if f.during != nil {
		d := f.during
		f.during = nil
		d()
	}
	return &discoveryv1.Destination{Kind: discoveryv1.Destination_SERVICE,
		Endpoints: []*discoveryv1.Endpoint{{Address: "10.1.0.1:80", Zone: f.zone}}}, []topic{fakeTopic}
}

func pendingOf(st *stream, e *answer) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.pending[e]
	return ok
}

// TestAnswersShared: holders of one destination share one computation and
// one state; an invalidation tells every holder; a recomputation that
// finds the same content keeps the same pointer; the last release forgets
// the destination.
func TestAnswersShared(t *testing.T) {
	f := &fakeLookup{zone: "a"}
	a := newAnswers(f.lookup, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	s1, s2 := newStream(nil, nil), newStream(nil, nil)
	e1 := a.acquire(netip.MustParseAddrPort("10.96.0.10:80"), s1)
	e2 := a.acquire(netip.MustParseAddrPort("[::ffff:10.96.0.10]:80"), s2)
	if e1 != e2 {
		t.Fatal("an IPv4-mapped destination got an answer of its own")
	}
	first := a.get(e1)
	if a.get(e2) != first || f.calls != 1 {
		t.Errorf("two holders: %d lookups, same state %v; want 1 lookup, one state", f.calls, a.get(e2) == first)
	}
	if got := testutil.ToFloat64(a.lookups); got != 1 {
		t.Errorf("lookups counter = %v, want 1", got)
	}

	a.invalidate([]topic{{topicPod, "shop/other"}}, time.Now())
	if pendingOf(s1, e1) || a.get(e1) != first || f.calls != 1 {
		t.Error("an event on a topic the answer did not read invalidated it")
	}
	a.invalidate([]topic{fakeTopic}, time.Now())
	if !pendingOf(s1, e1) || !pendingOf(s2, e1) {
		t.Error("a holder was not told of the invalidation")
	}
	if got := a.get(e1); got != first || f.calls != 2 {
		t.Errorf("unchanged recomputation: same pointer %v, %d lookups; want the same pointer, 2 lookups", got == first, f.calls)
	}
	f.zone = "b"
	a.invalidate([]topic{fakeTopic}, time.Now())
	if got := a.get(e2); got == first || got.Endpoints[0].Zone != "b" {
		t.Errorf("changed recomputation: %v", got)
	}

	a.release(e1, s1)
	a.release(e2, s2)
	if len(a.entries) != 0 || len(a.byTopic) != 0 {
		t.Errorf("after the last release: %d entries, %d topics indexed; want none", len(a.entries), len(a.byTopic))
	}
}

// TestAnswersRaced: an event that arrives while an answer is computed,
// on a topic the computation read, leaves the answer invalid and tells
// its holders, so that they compute it again from the changed store.
func TestAnswersRaced(t *testing.T) {
	f := &fakeLookup{zone: "a"}
	a := newAnswers(f.lookup, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	st := newStream(nil, nil)
	e := a.acquire(netip.MustParseAddrPort("10.96.0.10:80"), st)
	f.during = func() { a.invalidate([]topic{fakeTopic}, time.Now()) }
	a.get(e)
	if !pendingOf(st, e) {
		t.Error("the holder was not told of the event that raced the computation")
	}
	a.get(e)
	if f.calls != 2 {
		t.Errorf("%d lookups, want 2: the raced answer must not be kept as valid", f.calls)
	}
	a.get(e)
	if f.calls != 2 {
		t.Errorf("%d lookups, want 2: the second answer is valid", f.calls)
	}
}
