package balance

import (
	"net/netip"
	"testing"
	"time"
)

// picksWhileLoaded makes n picks calling no Done (so that the others get
// loaded and a would win if it could be picked), then settles them; it
// returns a's picks.
func picksWhileLoaded(t *testing.T, bal *Balancer, n int) int {
	t.Helper()
	got := 0
	for range n {
		ep, done, err := bal.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr == a {
			got++
		}
		defer done(30*time.Millisecond, false)
	}
	return got
}

func TestEjectionTimes(t *testing.T) {
	type step struct {
		served time.Duration // back in service before the failures
		want   time.Duration // the ejection's length
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"n×30s", Config{}, []step{
			{0, 30 * time.Second},
			{0, 60 * time.Second},
			{0, 90 * time.Second},
			{time.Minute, 60 * time.Second}, // 3, less 2 for 2×30 s served, plus 1
			{5 * time.Minute, 30 * time.Second},
		}},
		{"capped", Config{BaseEjection: 100 * time.Second, MaxEjection: 150 * time.Second}, []step{
			{0, 100 * time.Second},
			{0, 150 * time.Second},
			{0, 150 * time.Second},
			{200 * time.Second, 100 * time.Second},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bal, clk := newTest(t, tc.cfg, ready(2))
			for i, s := range tc.steps {
				clk.Advance(s.served)
				fail(t, bal, a, 4)
				if st := stat(t, bal, a); st.Ejected || st.ConsecutiveFailures != 4 {
					t.Fatalf("ejection %d: after 4 failures: ejected %v, %d in a row", i+1, st.Ejected, st.ConsecutiveFailures)
				}
				fail(t, bal, a, 1)
				st := stat(t, bal, a)
				if got := st.EjectedUntil.Sub(clk.Now()); !st.Ejected || got != s.want {
					t.Fatalf("ejection %d: ejected %v for %v, want %v", i+1, st.Ejected, got, s.want)
				}
				if got := picksWhileLoaded(t, bal, 100); got != 0 {
					t.Errorf("ejection %d: a took %d of 100 picks while ejected", i+1, got)
				}
				clk.Advance(s.want - 1)
				if got := picksWhileLoaded(t, bal, 100); got != 0 {
					t.Errorf("ejection %d: a took %d of 100 picks 1ns before its return", i+1, got)
				}
				clk.Advance(1)
				if got := picksWhileLoaded(t, bal, 100); got == 0 || stat(t, bal, a).Ejected {
					t.Errorf("ejection %d: a took no pick after its return", i+1)
				}
			}
		})
	}
}

func TestSuccessResetsFailures(t *testing.T) {
	bal, _ := newTest(t, Config{}, ready(2))
	fail(t, bal, a, 4)
	mine, others := hold(t, bal, a, 1)
	finish(mine, time.Millisecond, false)
	finish(others, 30*time.Millisecond, false)
	fail(t, bal, a, 4)
	if st := stat(t, bal, a); st.Ejected || st.ConsecutiveFailures != 4 {
		t.Fatalf("4, a success, 4: ejected %v, %d in a row; want not ejected, 4", st.Ejected, st.ConsecutiveFailures)
	}
	fail(t, bal, a, 1)
	if !stat(t, bal, a).Ejected {
		t.Error("not ejected after 5 failures in a row")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	twoNotReady := ready(4)
	twoNotReady[2].Ready, twoNotReady[3].Ready = false, false
	for _, tc := range []struct {
		name    string
		percent int
		eps     []Endpoint
		failing []netip.AddrPort
		want    int // ejected
	}{
		{"3 endpoints, 2 failing, 50%", 0, ready(3), []netip.AddrPort{a, b}, 1},
		{"3 endpoints, 2 failing, 100%", 100, ready(3), []netip.AddrPort{a, b}, 2},
		{"2 endpoints at 10%: one may always go", 10, ready(2), []netip.AddrPort{a, b}, 1},
		{"1 endpoint, 50%: never", 0, ready(1), []netip.AddrPort{a}, 0},
		{"share of the ready ones only", 50, twoNotReady, []netip.AddrPort{a, b}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bal, _ := newTest(t, Config{MaxEjectionPercent: tc.percent}, tc.eps)
			for _, to := range tc.failing {
				fail(t, bal, to, 5)
			}
			got := 0
			for _, s := range bal.Snapshot() {
				if s.Ejected {
					got++
				}
			}
			if got != tc.want {
				t.Errorf("%d ejected, want %d", got, tc.want)
			}
		})
	}

	// The ejection refused is made at the next failure once there is room.
	bal, clk := newTest(t, Config{}, ready(3))
	fail(t, bal, a, 5)
	fail(t, bal, b, 5)
	if stat(t, bal, b).Ejected {
		t.Fatal("b ejected beyond 50%")
	}
	clk.Advance(DefaultBaseEjection)
	fail(t, bal, b, 1)
	if !stat(t, bal, b).Ejected {
		t.Error("b not ejected at its next failure after a came back")
	}
}

func TestPanicMode(t *testing.T) {
	t.Run("every ready endpoint ejected", func(t *testing.T) {
		eps := ready(3)
		eps[2].Ready = false
		bal, clk := newTest(t, Config{MaxEjectionPercent: 100}, eps)
		fail(t, bal, a, 5)
		fail(t, bal, b, 5)
		if !stat(t, bal, a).Ejected || !stat(t, bal, b).Ejected {
			t.Fatal("a and b not both ejected")
		}
		picks := run(t, bal, clk, 300, 0, always(30*time.Millisecond))
		if picks[a] == 0 || picks[b] == 0 || picks[c] != 0 {
			t.Errorf("picks in panic mode %v, want a and b only", picks)
		}
		if !stat(t, bal, a).Ejected || !stat(t, bal, b).Ejected {
			t.Error("an ejection ended early")
		}
	})
	t.Run("the other endpoint goes", func(t *testing.T) {
		bal, _ := newTest(t, Config{}, ready(2))
		fail(t, bal, a, 5)
		eps := ready(2)
		eps[1].Ready = false
		bal.Update(eps)
		if ep, _, err := bal.Pick(); err != nil || ep.Addr != a || !stat(t, bal, a).Ejected {
			t.Errorf("Pick with the only ready endpoint ejected: %v, %v", ep.Addr, err)
		}
	})
}

func TestFailurePenalty(t *testing.T) {
	noProbes := 1 << 30
	for _, tc := range []struct {
		name        string
		penalty     time.Duration
		probeAfter  int
		wantPicks   int
		wantEjected bool
	}{
		{"without probes: tried once", 0, noProbes, 1, false},
		{"no penalty, without probes: preferred until ejected", time.Nanosecond, noProbes, DefaultConsecutive5xx, true},
		{"default: probed after each 20 losses until ejected", 0, 0, DefaultConsecutive5xx, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bal, clk := newTest(t, Config{FailurePenalty: tc.penalty, ProbeAfter: tc.probeAfter}, ready(2))
			// a answers in 10 ms, b fails in 1 ms.
			out := func(ep netip.AddrPort) (time.Duration, bool) {
				if ep == b {
					return time.Millisecond, true
				}
				return 10 * time.Millisecond, false
			}
			if got := run(t, bal, clk, 1000, 10*time.Millisecond, out)[b]; got != tc.wantPicks {
				t.Errorf("b, failing fast, took %d of 1,000 picks, want %d", got, tc.wantPicks)
			}
			if got := stat(t, bal, b).Ejected; got != tc.wantEjected {
				t.Errorf("b ejected: %v, want %v", got, tc.wantEjected)
			}
		})
	}
}
