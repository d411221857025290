package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
)

// draws returns a random source that hands out vals in order and fails t
// when asked for more.
func draws(t *testing.T, vals ...float64) (rnd func() float64, used func() int) {
	i := 0
	return func() float64 {
			if i == len(vals) {
				t.Errorf("more than %d draws", len(vals))
				return 0
			}
			i++
			return vals[i-1]
		}, func() int {
			return i
		}
}

func TestServeHTTP(t *testing.T) {
	const fixed = 100 * time.Millisecond
	delay := func(p float64) *Delay { return &Delay{Percent: p, Fixed: filters.Duration(fixed)} }
	abort := func(p float64) *Abort { return &Abort{Percent: p, Status: http.StatusServiceUnavailable} }
	for _, tt := range []struct {
		name    string
		cfg     Config
		draws   []float64
		delayed bool
		aborted bool
	}{
		{"delay always", Config{Delay: delay(100)}, []float64{0.999999}, true, false},
		{"delay drawn", Config{Delay: delay(10)}, []float64{0.0999}, true, false},
		{"delay not drawn", Config{Delay: delay(10)}, []float64{0.1}, false, false},
		{"delay never", Config{Delay: delay(0)}, []float64{0}, false, false},
		{"abort always", Config{Abort: abort(100)}, []float64{0.999999}, false, true},
		{"abort drawn", Config{Abort: abort(5)}, []float64{0.0499}, false, true},
		{"abort not drawn", Config{Abort: abort(5)}, []float64{0.05}, false, false},
		{"abort never", Config{Abort: abort(0)}, []float64{0}, false, false},
		{"both drawn", Config{Delay: delay(10), Abort: abort(5)}, []float64{0.01, 0.01}, true, true},
		{"delay drawn, abort not", Config{Delay: delay(10), Abort: abort(5)}, []float64{0.01, 0.5}, true, false},
		{"abort drawn, delay not", Config{Delay: delay(10), Abort: abort(5)}, []float64{0.5, 0.01}, false, true},
		{"fractional percent", Config{Abort: abort(0.1)}, []float64{0.000999}, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rnd, used := draws(t, tt.draws...)
				f, err := New(tt.cfg, rnd)
				if err != nil {
					t.Fatal(err)
				}
				info := &filters.Info{}
				r := httptest.NewRequest(http.MethodGet, "http://b/", nil)
				r = r.WithContext(filters.NewContext(r.Context(), info))
				w := httptest.NewRecorder()
				called := false
				start := time.Now()
				f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					called = true
					w.WriteHeader(http.StatusNoContent)
				}))

				var wantWait time.Duration
				var wantFlags filters.Flags
				wantStatus, wantBody := http.StatusNoContent, ""
				if tt.delayed {
					wantWait, wantFlags = fixed, filters.FaultDelay
				}
				if tt.aborted {
					wantFlags |= filters.FaultAbort
					wantStatus, wantBody = http.StatusServiceUnavailable, "fault filter abort\n"
				}
				if got := time.Since(start); got != wantWait {
					t.Errorf("waited %v, want %v", got, wantWait)
				}
				if got := info.Flags(); got != wantFlags {
					t.Errorf("flags = %v, want %v", got, wantFlags)
				}
				if called == tt.aborted {
					t.Errorf("next called: %v, want %v", called, !tt.aborted)
				}
				if w.Code != wantStatus || w.Body.String() != wantBody {
					t.Errorf("response = %d %q, want %d %q", w.Code, w.Body.String(), wantStatus, wantBody)
				}
				if tt.aborted {
					if got := w.Header().Get(filters.ErrorHeader); got != "fault filter abort" {
						t.Errorf("%s = %q, want \"fault filter abort\"", filters.ErrorHeader, got)
					}
					if got := w.Header().Get(filters.FlagsHeader); got != "FI" {
						t.Errorf("%s = %q, want \"FI\"", filters.FlagsHeader, got)
					}
				}
				if used() != len(tt.draws) {
					t.Errorf("%d draws, want %d", used(), len(tt.draws))
				}
			})
		})
	}
}

// TestDelayEndsWithContext: a delay longer than the request may take ends
// when the request's context does, and the request still goes on so that
// the router can report the time-out.
func TestDelayEndsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, err := New(Config{Delay: &Delay{Percent: 100, Fixed: filters.Duration(time.Hour)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		info := &filters.Info{}
		ctx, cancel := context.WithTimeout(filters.NewContext(t.Context(), info), 50*time.Millisecond)
		defer cancel()
		r := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://b/", nil)
		var nextErr error
		start := time.Now()
		f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			nextErr = r.Context().Err()
			if nextErr == nil {
				nextErr = context.Canceled // any error other than the one wanted
			}
		}))
		if got := time.Since(start); got != 50*time.Millisecond {
			t.Errorf("waited %v, want the context's 50ms", got)
		}
		if nextErr != context.DeadlineExceeded {
			t.Errorf("next saw context error %v, want it called with the expired context", nextErr)
		}
		if got := info.Flags(); got != filters.FaultDelay {
			t.Errorf("flags = %v, want DI", got)
		}
	})
}

// TestDefaultRandom: with no random source given, 100% always and 0%
// never happen.
func TestDefaultRandom(t *testing.T) {
	always, err := (&Config{Abort: &Abort{Percent: 100, Status: 500}}).Build(filters.Env{Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	never, err := (&Config{Abort: &Abort{Percent: 0, Status: 500}}).Build(filters.Env{Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	for range 100 {
		w := httptest.NewRecorder()
		always.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://b/", nil), ok)
		if w.Code != 500 {
			t.Fatalf("100%%: status %d, want 500", w.Code)
		}
		w = httptest.NewRecorder()
		never.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://b/", nil), ok)
		if w.Code != 200 {
			t.Fatalf("0%%: status %d, want 200", w.Code)
		}
	}
}

func TestBuildInvalid(t *testing.T) {
	ms := filters.Duration(time.Millisecond)
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"empty", Config{}, "needs delay, abort or both"},
		{"delay percent over 100", Config{Delay: &Delay{Percent: 100.5, Fixed: ms}}, "delay.percent: must be 0 to 100, got 100.5"},
		{"delay percent negative", Config{Delay: &Delay{Percent: -1, Fixed: ms}}, "delay.percent: must be 0 to 100, got -1"},
		{"delay percent NaN", Config{Delay: &Delay{Percent: math.NaN(), Fixed: ms}}, "delay.percent: must be 0 to 100, got NaN"},
		{"no fixed delay", Config{Delay: &Delay{Percent: 10}}, "delay.fixed: must be more than 0s, got 0s"},
		{"negative fixed delay", Config{Delay: &Delay{Percent: 10, Fixed: -ms}}, "delay.fixed: must be more than 0s, got -1ms"},
		{"abort percent", Config{Abort: &Abort{Percent: 101, Status: 503}}, "abort.percent: must be 0 to 100, got 101"},
		{"no status", Config{Abort: &Abort{Percent: 5}}, "abort.status: must be 200 to 599, got 0"},
		{"1xx status", Config{Abort: &Abort{Percent: 5, Status: 103}}, "abort.status: must be 200 to 599, got 103"},
		{"status 600", Config{Abort: &Abort{Percent: 5, Status: 600}}, "abort.status: must be 200 to 599, got 600"},
		{"delay checked first", Config{Delay: &Delay{Percent: 10}, Abort: &Abort{Percent: 5}}, "delay.fixed: must be more than 0s, got 0s"},
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
		{
			in: `{"delay": {"percent": 10, "fixed": "100ms"}, "abort": {"percent": 5, "status": 503}}`,
			want: Config{
				Delay: &Delay{Percent: 10, Fixed: filters.Duration(100 * time.Millisecond)},
				Abort: &Abort{Percent: 5, Status: 503},
			},
		},
		{in: `{"abort": {"percent": 0.5, "status": 500}}`, want: Config{Abort: &Abort{Percent: 0.5, Status: 500}}},
		{in: `{"abort": {"percent": 5, "httpStatus": 500}}`, err: `json: unknown field "httpStatus"`},
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
