package ratelimit

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
)

// clock is a fake filters.Env.Now; tests move it between requests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func build(t *testing.T, c Config, clk *clock) *RateLimit {
	t.Helper()
	f, err := c.Build(filters.Env{Now: clk.now})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return f.(*RateLimit)
}

// serve sends one request through l and reports whether next ran; it
// checks that a refused request got the proxy's 429.
func serve(t *testing.T, l *RateLimit) bool {
	t.Helper()
	info := &filters.Info{}
	r := httptest.NewRequest(http.MethodGet, "http://b/", nil)
	r = r.WithContext(filters.NewContext(r.Context(), info))
	w := httptest.NewRecorder()
	w.Header().Set("X-Set-Before", "1") // Reply must clear it
	passed := false
	l.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		passed = true
		w.WriteHeader(http.StatusNoContent)
	}))
	if passed {
		if w.Code != http.StatusNoContent || info.Flags() != 0 {
			t.Errorf("passed request: status %d, flags %v; want next's 204 and no flags", w.Code, info.Flags())
		}
		return true
	}
	if w.Code != http.StatusTooManyRequests {
		t.Errorf("refused request: status %d, want 429", w.Code)
	}
	if got := info.Flags(); got != filters.RateLimited {
		t.Errorf("refused request: flags %v, want RL", got)
	}
	want := http.Header{
		"Content-Type":           {"text/plain; charset=utf-8"},
		"X-Content-Type-Options": {"nosniff"},
		"Pillion-Response-Flags": {"RL"},
		"Pillion-Proxy-Error":    {"rate limited"},
	}
	if diff := cmp.Diff(want, w.Result().Header); diff != "" {
		t.Errorf("refused request: headers (-want +got):\n%s", diff)
	}
	if got := w.Body.String(); got != "rate limited\n" {
		t.Errorf("refused request: body %q, want \"rate limited\\n\"", got)
	}
	return false
}

// step is a pause, then some requests and which of them pass.
type step struct {
	after time.Duration // added to the clock before the requests
	want  []bool
}

func TestBucket(t *testing.T) {
	y, n := true, false
	for _, tt := range []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"burst defaults to the rate", Config{RequestsPerSecond: 3}, []step{{0, []bool{y, y, y, n, n}}}},
		{"default burst rounds up", Config{RequestsPerSecond: 2.5}, []step{{0, []bool{y, y, y, n}}}},
		{"default burst of a slow rate is 1", Config{RequestsPerSecond: 0.5}, []step{
			{0, []bool{y, n}},
			{time.Second, []bool{n}},
			{time.Second, []bool{y, n}},
		}},
		{"explicit burst", Config{RequestsPerSecond: 1, Burst: new(4)}, []step{{0, []bool{y, y, y, y, n}}}},
		{"refill at the rate", Config{RequestsPerSecond: 2, Burst: new(1)}, []step{
			{0, []bool{y, n}},
			{499 * time.Millisecond, []bool{n}},
			{time.Millisecond, []bool{y, n}},
			{time.Second, []bool{y, n}}, // two tokens' worth, but the bucket holds one
		}},
		{"partial tokens add up", Config{RequestsPerSecond: 4, Burst: new(2)}, []step{
			{0, []bool{y, y, n}},
			{125 * time.Millisecond, []bool{n}},
			{125 * time.Millisecond, []bool{y, n}},
		}},
		{"full after a quiet spell", Config{RequestsPerSecond: 10, Burst: new(3)}, []step{
			{0, []bool{y, y, y, n}},
			{time.Hour, []bool{y, y, y, n}},
		}},
		{"refused requests take nothing", Config{RequestsPerSecond: 1, Burst: new(1)}, []step{
			{0, []bool{y, n, n, n, n}},
			{time.Second, []bool{y}},
		}},
		{"clock stepping back adds nothing", Config{RequestsPerSecond: 1, Burst: new(1)}, []step{
			{0, []bool{y}},
			{-time.Hour, []bool{n}},
			{time.Hour, []bool{n}}, // back where it was: still no time has passed
			{time.Second, []bool{y}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			l := build(t, tt.cfg, clk)
			for i, s := range tt.steps {
				clk.t = clk.t.Add(s.after)
				got := make([]bool, len(s.want))
				for j := range got {
					got[j] = serve(t, l)
				}
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Errorf("step %d (+%v): passed (-want +got):\n%s", i, s.after, diff)
				}
			}
		})
	}
}

// TestConcurrent: many requests at once on a stopped clock, exactly burst
// of them pass.
func TestConcurrent(t *testing.T) {
	const burst, requests = 25, 200
	l := build(t, Config{RequestsPerSecond: 1, Burst: new(burst)}, newClock())
	var passed atomic.Int32
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { passed.Add(1) })
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			l.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "http://b/", nil), next)
		})
	}
	wg.Wait()
	if got := passed.Load(); got != burst {
		t.Errorf("%d of %d requests passed, want %d", got, requests, burst)
	}
}

// TestBucketPerFilter: two filters built from one config do not share a
// bucket.
func TestBucketPerFilter(t *testing.T) {
	clk := newClock()
	cfg := Config{RequestsPerSecond: 1}
	a, b := build(t, cfg, clk), build(t, cfg, clk)
	if !serve(t, a) || serve(t, a) {
		t.Fatal("first filter: want one request through, then none")
	}
	if !serve(t, b) {
		t.Error("second filter refused its first request")
	}
}

func TestBuildInvalid(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no rate", Config{}, "requestsPerSecond: must be more than 0, got 0"},
		{"negative rate", Config{RequestsPerSecond: -5}, "requestsPerSecond: must be more than 0, got -5"},
		{"NaN rate", Config{RequestsPerSecond: math.NaN()}, "requestsPerSecond: must be more than 0, got NaN"},
		{"rate too high", Config{RequestsPerSecond: 2e9}, "requestsPerSecond: must be at most 1e+09, got 2e+09"},
		{"infinite rate", Config{RequestsPerSecond: math.Inf(1)}, "requestsPerSecond: must be at most 1e+09, got +Inf"},
		{"zero burst", Config{RequestsPerSecond: 10, Burst: new(0)}, "burst: must be at least 1, got 0"},
		{"negative burst", Config{RequestsPerSecond: 10, Burst: new(-3)}, "burst: must be at least 1, got -3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := tt.cfg.Build(filters.Env{Now: time.Now})
			if err == nil {
				t.Fatalf("Build = %v, want an error", f)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error = %q\nwant    %q", got, tt.want)
			}
		})
	}
}

// TestDecode: the config file's field names, decoded as the loader does.
func TestDecode(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Config
		err  string
	}{
		{in: `{"requestsPerSecond": 200, "burst": 400}`, want: Config{RequestsPerSecond: 200, Burst: new(400)}},
		{in: `{"requestsPerSecond": 0.5}`, want: Config{RequestsPerSecond: 0.5}},
		{in: `{"requestsPerSecond": 1, "burst": 0}`, want: Config{RequestsPerSecond: 1, Burst: new(0)}},
		{in: `{"rps": 1}`, err: `json: unknown field "rps"`},
	} {
		t.Run(tt.in, func(t *testing.T) {
			var got Config
			d := json.NewDecoder(bytes.NewReader([]byte(tt.in)))
			d.DisallowUnknownFields()
			err := d.Decode(&got)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("Decode = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decoded (-want +got):\n%s", diff)
			}
		})
	}
}
