package balance

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// clock is a fake clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// addr is the address of the i-th test endpoint.
func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 8080)
}

var a, b, c = addr(1), addr(2), addr(3)

// ready returns n ready endpoints, addr(1) to addr(n), with the weights
// given (the rest 0).
func ready(n int, weights ...uint32) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{Endpoint: upstream.Endpoint{Addr: addr(i + 1)}, Ready: true, Serving: true}
		if i < len(weights) {
			eps[i].Weight = weights[i]
		}
	}
	return eps
}

// newTest returns a Balancer of eps on a fake clock with seeded randomness.
func newTest(t testing.TB, cfg Config, eps []Endpoint) (*Balancer, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	bal := New(cfg, clk.Now, rand.New(rand.NewPCG(7, 11)))
	bal.Update(eps)
	return bal, clk
}

// outcome is what the endpoint at an address answers.
type outcome func(netip.AddrPort) (latency time.Duration, failed bool)

func always(latency time.Duration) outcome {
	return func(netip.AddrPort) (time.Duration, bool) { return latency, false }
}

// run makes n picks, the clock advancing step before each, calling Done at
// once with the outcome; it returns the picks by address.
func run(t testing.TB, bal *Balancer, clk *clock, n int, step time.Duration, out outcome) map[netip.AddrPort]int {
	t.Helper()
	picks := map[netip.AddrPort]int{}
	for range n {
		clk.Advance(step)
		ep, done, err := bal.Pick()
		if err != nil {
			t.Fatal(err)
		}
		picks[ep.Addr]++
		done(out(ep.Addr))
	}
	return picks
}

// hold picks until to has been picked n times, calling no Done; it returns
// the Dones of to's picks and of the others'.
func hold(t testing.TB, bal *Balancer, to netip.AddrPort, n int) (mine, others []upstream.Done) {
	t.Helper()
	for range 10_000 {
		ep, done, err := bal.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr != to {
			others = append(others, done)
			continue
		}
		if mine = append(mine, done); len(mine) == n {
			return mine, others
		}
	}
	t.Fatalf("%v picked %d times in 10,000 picks, want %d", to, len(mine), n)
	return nil, nil
}

func finish(dones []upstream.Done, latency time.Duration, failed bool) {
	for _, done := range dones {
		done(latency, failed)
	}
}

// fail makes n requests to to fail in a row (in flight together), the
// others' succeed.
func fail(t testing.TB, bal *Balancer, to netip.AddrPort, n int) {
	t.Helper()
	mine, others := hold(t, bal, to, n)
	finish(mine, time.Millisecond, true)
	finish(others, 30*time.Millisecond, false)
}

func stat(t testing.TB, bal *Balancer, of netip.AddrPort) EndpointStats {
	t.Helper()
	for _, s := range bal.Snapshot() {
		if s.Addr == of {
			return s
		}
	}
	t.Fatalf("%v not in the snapshot", of)
	return EndpointStats{}
}

func TestShares(t *testing.T) {
	const picks = 30_000
	for _, tc := range []struct {
		name    string
		weights []uint32
		// inflight: requests outstanding, answered oldest first; 0: each
		// is answered before the next pick.
		inflight int
		want     []float64
	}{
		{"equal, one at a time", []uint32{1, 1, 1}, 0, []float64{1. / 3, 1. / 3, 1. / 3}},
		{"equal, 30 in flight", []uint32{1, 1, 1}, 30, []float64{1. / 3, 1. / 3, 1. / 3}},
		{"weights 2:1, one at a time", []uint32{2, 1}, 0, []float64{2. / 3, 1. / 3}},
		{"weights 2:1, 30 in flight", []uint32{2, 1}, 30, []float64{2. / 3, 1. / 3}},
		{"weight 0 is 1", []uint32{0, 1}, 0, []float64{1. / 2, 1. / 2}},
		{"weights 1:2:5, 40 in flight", []uint32{1, 2, 5}, 40, []float64{1. / 8, 2. / 8, 5. / 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bal, _ := newTest(t, Config{}, ready(len(tc.weights), tc.weights...))
			count := map[netip.AddrPort]int{}
			var queue []upstream.Done
			for range picks {
				ep, done, err := bal.Pick()
				if err != nil {
					t.Fatal(err)
				}
				count[ep.Addr]++
				if queue = append(queue, done); len(queue) > tc.inflight {
					queue[0](30*time.Millisecond, false)
					queue = queue[1:]
				}
			}
			for i, want := range tc.want {
				if got := float64(count[addr(i+1)]) / picks; math.Abs(got-want) > 0.03 {
					t.Errorf("%v took %.3f of the picks, want %.3f±0.03", addr(i+1), got, want)
				}
			}
		})
	}
}

// TestLatencyFloor: one request at a time to three alike endpoints whose
// latencies jitter below the floor (0.3 to 1 ms, a 4 ms blip now and then)
// are shared evenly, by the floor or by the probes alone; with neither, the
// endpoint with the last blip is shut out for seconds and the shares skew.
func TestLatencyFloor(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	noisy := func(netip.AddrPort) (time.Duration, bool) {
		if rnd.IntN(200) == 0 {
			return 4 * time.Millisecond, false
		}
		return time.Duration(300+rnd.IntN(700)) * time.Microsecond, false
	}
	spread := func(cfg Config) (lo, hi float64) {
		bal, clk := newTest(t, cfg, ready(3))
		picks := run(t, bal, clk, 3000, time.Millisecond, noisy)
		lo, hi = 1, 0
		for _, ep := range []netip.AddrPort{a, b, c} {
			s := float64(picks[ep]) / 3000
			lo, hi = min(lo, s), max(hi, s)
		}
		return lo, hi
	}
	if lo, hi := spread(Config{}); lo < 0.30 || hi > 0.37 {
		t.Errorf("with the floor: shares %.3f to %.3f, want 1/3 ± 0.03", lo, hi)
	}
	if lo, hi := spread(Config{LatencyFloor: time.Nanosecond}); lo < 0.30 || hi > 0.37 {
		t.Errorf("without the floor, with probes: shares %.3f to %.3f, want 1/3 ± 0.03", lo, hi)
	}
	if lo, hi := spread(Config{LatencyFloor: time.Nanosecond, ProbeAfter: 1 << 30}); hi-lo < 0.1 {
		t.Errorf("without the floor and probes: shares %.3f to %.3f; the test's noise no longer skews them", lo, hi)
	}
}

// TestProbe: after one 200 ms blip, far above the floor and the others,
// one request at a time tries the endpoint again once it lost ProbeAfter
// pairs in a row, and its fast answer replaces the blip.
func TestProbe(t *testing.T) {
	bal, clk := newTest(t, Config{}, ready(3))
	blip := true
	out := func(ep netip.AddrPort) (time.Duration, bool) {
		if ep == a && blip {
			blip = false
			return 200 * time.Millisecond, false
		}
		return time.Millisecond, false
	}
	for blip { // until a answered once
		run(t, bal, clk, 1, time.Millisecond, out)
	}
	if got := stat(t, bal, a).EWMA; got < 150*time.Millisecond {
		t.Fatalf("a's estimate after the blip is %v, want about 200ms", got)
	}
	before := stat(t, bal, a).Requests
	picks := 0
	for stat(t, bal, a).Requests == before {
		run(t, bal, clk, 1, time.Millisecond, out)
		if picks++; picks > 100 {
			t.Fatal("a was not tried again in 100 picks")
		}
	}
	// a is drawn in 2 of 3 pairs: ProbeAfter losses take about 30 picks.
	if picks < DefaultProbeAfter {
		t.Errorf("a was tried again after %d picks, want at least %d (it loses until then)", picks, DefaultProbeAfter)
	}
	if got := stat(t, bal, a).EWMA; got != time.Millisecond {
		t.Errorf("a's estimate after the probe is %v, want its answer, 1ms", got)
	}
}

func TestPrefersFasterAndProbes(t *testing.T) {
	bal, clk := newTest(t, Config{}, ready(2))
	slow := 50 * time.Millisecond
	out := func(ep netip.AddrPort) (time.Duration, bool) {
		if ep == a {
			return slow, false
		}
		return time.Millisecond, false
	}
	// One request each: a's estimate is 50 ms, b's 1 ms (below the floor).
	for i := range 2 {
		only := ready(2)
		only[1-i].Ready = false
		bal.Update(only)
		run(t, bal, clk, 1, 0, out)
	}
	bal.Update(ready(2))
	if got := stat(t, bal, a).EWMA; got != slow {
		t.Fatalf("a's estimate is %v, want %v", got, slow)
	}

	// 1,000 requests a second: a takes few.
	if got := run(t, bal, clk, 1000, time.Millisecond, out)[a]; got >= 150 {
		t.Errorf("slow a took %d of 1,000 picks, want fewer than 150", got)
	}
	// Ten a second for a minute: a loses every pair, and is probed once
	// it lost 20 in a row (its estimate decays to the floor only in
	// 10s×ln 2.5 ≈ 9 s, which adds a few more).
	if got := run(t, bal, clk, 600, 100*time.Millisecond, out)[a]; got < 600/(DefaultProbeAfter+1) || got > 40 {
		t.Errorf("slow a took %d of 600 picks in a minute, want %d to 40 (probes)", got, 600/(DefaultProbeAfter+1))
	}
	// a is as fast as b now: within two minutes it takes half again.
	slow = time.Millisecond
	run(t, bal, clk, 1200, 100*time.Millisecond, out)
	if got := run(t, bal, clk, 1000, 100*time.Millisecond, out)[a]; got < 400 || got > 600 {
		t.Errorf("a, fast again, took %d of 1,000 picks, want 400 to 600", got)
	}
}

func TestEWMA(t *testing.T) {
	exp, ms := math.Exp, float64(time.Millisecond)
	steps := []struct {
		name    string
		advance time.Duration
		latency time.Duration // <0: no request, only the snapshot
		failed  bool
		want    float64 // nanoseconds
	}{
		{"before any response: not heard from", 0, -1, false, 0},
		{"the first response sets it", time.Second, 30 * time.Millisecond, false, 30 * ms},
		{"decayed while idle", time.Second, -1, false, 30 * ms * exp(-0.1)},
		{"below: averaged in", time.Second, 10 * time.Millisecond, false, 30*ms*exp(-0.2) + 10*ms*(1-exp(-0.2))},
		{"above: the peak", 0, 100 * time.Millisecond, false, 100 * ms},
		{"no time passed: unchanged", 0, 20 * time.Millisecond, false, 100 * ms},
		{"decays toward zero", 5 * time.Second, -1, false, 100 * ms * exp(-0.5)},
		{"5 s after the peak", 0, 20 * time.Millisecond, false, 100*ms*exp(-0.5) + 20*ms*(1-exp(-0.5))},
		{"fast failure counts as the penalty", 3 * time.Second, time.Millisecond, true, 1000 * ms},
		{"slow failure counts as itself", 0, 3 * time.Second, true, 3000 * ms},
		{"success 20 s later", 20 * time.Second, 5 * time.Millisecond, false, 3000*ms*exp(-2) + 5*ms*(1-exp(-2))},
	}
	bal, clk := newTest(t, Config{}, ready(1))
	for _, s := range steps {
		clk.Advance(s.advance)
		if s.latency >= 0 {
			_, done, err := bal.Pick()
			if err != nil {
				t.Fatal(err)
			}
			done(s.latency, s.failed)
		}
		if got := stat(t, bal, a).EWMA; math.Abs(float64(got)-s.want) > 1 {
			t.Errorf("%s: EWMA %v, want %v", s.name, got, time.Duration(s.want))
		}
	}
}

// TestNoLatency: a Done without a latency settles the pick and counts its
// outcome, but leaves the estimate as it was: not heard from stays so.
func TestNoLatency(t *testing.T) {
	bal, _ := newTest(t, Config{}, ready(1))
	_, done, _ := bal.Pick()
	done(upstream.NoLatency, false)
	if s := stat(t, bal, a); s.EWMA != 0 || s.Pending != 0 || s.Requests != 1 {
		t.Errorf("after a Done without latency: %+v, want no estimate, nothing pending, one request", s)
	}
	_, done, _ = bal.Pick()
	done(upstream.NoLatency, true)
	if s := stat(t, bal, a); s.EWMA != DefaultFailurePenalty || s.Failures != 1 {
		t.Errorf("after a failure without latency: %+v, want the failure penalty as the estimate", s)
	}
}

func TestAvoidsPending(t *testing.T) {
	bal, clk := newTest(t, Config{}, ready(3))
	mine, others := hold(t, bal, a, 10)
	finish(others, 30*time.Millisecond, false)
	if got := stat(t, bal, a).Pending; got != 10 {
		t.Fatalf("a has %d pending, want 10", got)
	}
	if got := run(t, bal, clk, 1000, 0, always(30*time.Millisecond))[a]; got != 0 {
		t.Errorf("a, 10 requests pending, took %d of 1,000 picks, want 0", got)
	}
	finish(mine, 30*time.Millisecond, false)
	if got := run(t, bal, clk, 3000, 0, always(30*time.Millisecond))[a]; got < 900 {
		t.Errorf("a, none pending, took %d of 3,000 picks, want about 1,000", got)
	}
}

func TestEligible(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    Endpoint // b is ready
		want []netip.AddrPort
	}{
		{"ready", Endpoint{Ready: true, Serving: true}, []netip.AddrPort{a, b}},
		{"ready and terminating", Endpoint{Ready: true, Serving: true, Terminating: true}, []netip.AddrPort{b}},
		{"serving and terminating", Endpoint{Serving: true, Terminating: true}, []netip.AddrPort{b}},
		{"not ready", Endpoint{}, []netip.AddrPort{b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eps := ready(2)
			tc.a.Addr = a
			eps[0] = tc.a
			bal, clk := newTest(t, Config{}, eps)
			picks := run(t, bal, clk, 300, time.Millisecond, always(30*time.Millisecond))
			var got []netip.AddrPort
			for _, to := range []netip.AddrPort{a, b} {
				if picks[to] > 0 {
					got = append(got, to)
				}
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y })); diff != "" {
				t.Errorf("picked (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNoHealthyUpstream(t *testing.T) {
	notReady := ready(2)
	notReady[0].Ready = false
	notReady[1].Ready = false
	terminating := ready(2)
	terminating[0].Terminating = true
	terminating[1].Terminating = true
	for _, tc := range []struct {
		name    string
		eps     []Endpoint
		wantErr string
	}{
		{"none given", nil, "balance: no endpoints: no healthy upstream"},
		{"none ready", notReady, "balance: no ready endpoints: no healthy upstream"},
		{"all terminating", terminating, "balance: no ready endpoints: no healthy upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bal, _ := newTest(t, Config{}, ready(2))
			bal.Update(tc.eps)
			ep, done, err := bal.Pick()
			if !errors.Is(err, upstream.ErrNoHealthyUpstream) || err.Error() != tc.wantErr {
				t.Fatalf("Pick: %v, %v, want %q", ep, err, tc.wantErr)
			}
			if done != nil {
				t.Error("Pick failed but returned a Done")
			}
			bal.Update(ready(1))
			if ep, _, err := bal.Pick(); err != nil || ep.Addr != a {
				t.Errorf("Pick after a ready endpoint came: %v, %v", ep.Addr, err)
			}
		})
	}
	if _, _, err := New(Config{}, nil, nil).Pick(); err == nil || err.Error() != "balance: no endpoints: no healthy upstream" {
		t.Errorf("Pick before any Update: %v", err)
	}
}

func TestUpdateKeepsState(t *testing.T) {
	type row struct {
		Addr              netip.AddrPort
		EWMA              time.Duration
		Pending, Requests int
		Weight            uint32
		Zone              string
	}
	rows := func(bal *Balancer) []row {
		var out []row
		for _, s := range bal.Snapshot() {
			out = append(out, row{s.Addr, s.EWMA, s.Pending, int(s.Requests), s.Weight, s.Zone})
		}
		return out
	}
	opts := cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y })

	bal, _ := newTest(t, Config{}, ready(2))
	mine, others := hold(t, bal, a, 2)
	mine[0](100*time.Millisecond, false) // a: the peak, one pending
	held, _ := hold(t, bal, b, 2)        // b: some pending
	finish(others, 30*time.Millisecond, false)
	before := stat(t, bal, a)

	eps := ready(3)
	eps[0].Weight, eps[0].Zone = 5, "zone-a"
	bal.Update([]Endpoint{eps[0], eps[2], eps[0]}) // b goes, c comes, a twice
	want := []row{
		{a, 100 * time.Millisecond, 1, int(before.Requests), 5, "zone-a"},
		{c, 0, 0, 0, 1, ""}, // not heard from
	}
	if diff := cmp.Diff(want, rows(bal), opts); diff != "" {
		t.Fatalf("after the Update (-want +got):\n%s", diff)
	}
	// The Dones of b, gone, change nothing; b comes back afresh.
	finish(held, time.Millisecond, true)
	mine[1](time.Millisecond, false)
	want[0].Pending = 0
	bal.Update([]Endpoint{eps[0], eps[2], eps[1]})
	want = append(want, row{b, 0, 0, 0, 1, ""})
	if diff := cmp.Diff(want, rows(bal), opts); diff != "" {
		t.Errorf("after b came back (-want +got):\n%s", diff)
	}
}

// TestNewEndpoint: an endpoint added to warm ones is not heard from, is
// tried at once by one request at a time (a start at a default estimate
// above theirs would wait for it to decay below them), and its first
// response sets its estimate.
func TestNewEndpoint(t *testing.T) {
	cfg := Config{LatencyFloor: time.Nanosecond} // estimates compared as they are
	bal, clk := newTest(t, cfg, ready(3))
	warm := map[netip.AddrPort]time.Duration{a: time.Millisecond, b: 2 * time.Millisecond, c: 4 * time.Millisecond}
	out := func(ep netip.AddrPort) (time.Duration, bool) {
		if lat, ok := warm[ep]; ok {
			return lat, false
		}
		return 3 * time.Millisecond, false
	}
	run(t, bal, clk, 100, 5*time.Millisecond, out)
	d := addr(4)
	bal.Update(ready(4))
	if got := stat(t, bal, d).EWMA; got != 0 {
		t.Errorf("a new endpoint's estimate is %v, want 0 (not heard from)", got)
	}
	picks := 0
	for picks < 10 && stat(t, bal, d).Requests == 0 {
		run(t, bal, clk, 1, 5*time.Millisecond, out)
		picks++
	}
	if n := stat(t, bal, d).Requests; n != 1 {
		t.Fatalf("the new endpoint took %d of the first %d picks, want the first it was drawn for", n, picks)
	}
	if got := stat(t, bal, d).EWMA; got != 3*time.Millisecond {
		t.Errorf("after its first response the new endpoint's estimate is %v, want 3ms", got)
	}
}

func TestDoneTwice(t *testing.T) {
	bal, _ := newTest(t, Config{}, ready(1))
	_, done, err := bal.Pick()
	if err != nil {
		t.Fatal(err)
	}
	done(time.Millisecond, true)
	done(time.Millisecond, true)
	s := stat(t, bal, a)
	if s.Pending != 0 || s.Requests != 1 || s.Failures != 1 || s.ConsecutiveFailures != 1 {
		t.Errorf("after Done twice: pending %d, requests %d, failures %d, consecutive %d; want 0, 1, 1, 1",
			s.Pending, s.Requests, s.Failures, s.ConsecutiveFailures)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{}, ""},
		{Config{LatencyFloor: -1}, "balance: latencyFloor: must not be negative, got -1ns"},
		{Config{ProbeAfter: -1}, "balance: probeAfter: must not be negative, got -1"},
		{Config{Decay: -time.Second}, "balance: decay: must not be negative, got -1s"},
		{Config{FailurePenalty: -1}, "balance: failurePenalty: must not be negative, got -1ns"},
		{Config{BaseEjection: -1}, "balance: baseEjection: must not be negative, got -1ns"},
		{Config{MaxEjection: -1}, "balance: maxEjection: must not be negative, got -1ns"},
		{Config{Consecutive5xx: -1}, "balance: consecutive5xx: must not be negative, got -1"},
		{Config{MaxEjectionPercent: 101}, "balance: maxEjectionPercent: must be 0 to 100, got 101"},
		{Config{MaxEjection: 10 * time.Second}, "balance: maxEjection: must be at least baseEjection (30s), got 10s"},
		{Config{BaseEjection: 10 * time.Minute}, "balance: maxEjection: must be at least baseEjection (10m0s), got 5m0s"},
		{Config{BaseEjection: time.Second, MaxEjection: time.Second}, ""},
	} {
		err := tc.cfg.Validate()
		if got := fmt.Sprint(err); (err != nil || tc.wantErr != "") && got != tc.wantErr {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.wantErr)
		}
	}
	defer func() {
		if r := recover(); fmt.Sprint(r) != "balance: decay: must not be negative, got -1ns" {
			t.Errorf("New of an invalid Config: recovered %v", r)
		}
	}()
	New(Config{Decay: -1}, nil, nil)
}

// TestConcurrent is for -race: picks, Dones (some twice), Updates and
// Snapshots at once; a, in every set, must account for every pick.
func TestConcurrent(t *testing.T) {
	bal := New(Config{}, nil, rand.New(rand.NewPCG(1, 2)))
	all := ready(4)
	sets := [][]Endpoint{all, all[:2], {all[0], all[3]}, {all[0]}}
	bal.Update(all)
	var picksA atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			bal.Update(sets[i%len(sets)])
			_ = bal.Snapshot()
		}
	})
	var pickers sync.WaitGroup
	for g := range 8 {
		pickers.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 0))
			for i := range 2000 {
				ep, done, err := bal.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				if ep.Addr == a {
					picksA.Add(1)
				}
				failed := rnd.IntN(10) == 0
				done(time.Duration(rnd.IntN(5000))*time.Microsecond, failed)
				if i%7 == 0 {
					done(time.Millisecond, false)
				}
			}
		})
	}
	pickers.Wait()
	close(stop)
	wg.Wait()
	bal.Update(all)
	s := stat(t, bal, a)
	if s.Pending != 0 || s.Requests != uint64(picksA.Load()) {
		t.Errorf("a: pending %d, requests %d; want 0, %d", s.Pending, s.Requests, picksA.Load())
	}
}
