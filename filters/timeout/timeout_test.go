package timeout

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

func env() filters.Env {
	return filters.Env{Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now}
}

// decode decodes js the way the config loader does: strictly.
func decode(t *testing.T, js string) (*Config, error) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader([]byte(js)))
	d.DisallowUnknownFields()
	c := new(Config)
	return c, d.Decode(c)
}

func TestConfig(t *testing.T) {
	for _, tt := range []struct {
		name, json string
		want       time.Duration
		err        string
	}{
		{"valid", `{"request": "15s"}`, 15 * time.Second, ""},
		{"sub-second", `{"request": "250ms"}`, 250 * time.Millisecond, ""},
		{"missing", `{}`, 0, `request: required, a duration such as "15s"`},
		{"zero", `{"request": "0s"}`, 0, `request: required, a duration such as "15s"`},
		{"negative", `{"request": "-1s"}`, 0, "request: must be more than 0, got -1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decode(t, tt.json)
			if err != nil {
				t.Fatal(err)
			}
			f, err := c.Build(env())
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("Build() error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.(*Timeout).d; got != tt.want {
				t.Errorf("deadline in %v, want %v", got, tt.want)
			}
		})
	}
}

func TestConfigDecodeStrict(t *testing.T) {
	for _, js := range []string{`{"timeout": "15s"}`, `{"request": 15}`, `{"request": "15"}`} {
		if _, err := decode(t, js); err == nil {
			t.Errorf("decoding %s: no error", js)
		}
	}
}

func build(t *testing.T, d string) *Timeout {
	t.Helper()
	c, err := decode(t, `{"request": "`+d+`"}`)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Build(env())
	if err != nil {
		t.Fatal(err)
	}
	return f.(*Timeout)
}

func TestDeadline(t *testing.T) {
	for _, tt := range []struct {
		name    string
		request string
		outer   time.Duration // 0: the request has no deadline of its own
		upgrade string
		// want is the deadline next sees, as a distance from when
		// ServeHTTP was called; 0: none.
		want time.Duration
	}{
		{"sets the deadline", "15s", 0, "", 15 * time.Second},
		{"earlier deadline wins", "1h", time.Minute, "", time.Minute},
		{"later deadline loses", "2s", time.Hour, "", 2 * time.Second},
		{"upgrade has none", "15s", 0, "websocket", 0},
		{"upgrade keeps the outer one", "15s", time.Minute, "websocket", time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := build(t, tt.request)
			ctx := filters.NewContext(context.Background(), &filters.Info{Upgrade: tt.upgrade})
			if tt.outer > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.outer)
				defer cancel()
			}
			r := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://b/x", nil)
			var seen context.Context
			before := time.Now()
			f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = r.Context()
			}))
			after := time.Now()
			deadline, ok := seen.Deadline()
			if tt.want == 0 {
				if ok {
					t.Fatalf("next saw a deadline %v away", deadline.Sub(before))
				}
				return
			}
			if !ok {
				t.Fatal("next saw no deadline")
			}
			if deadline.Before(before.Add(tt.want-time.Second)) || deadline.After(after.Add(tt.want)) {
				t.Errorf("next saw a deadline %v away, want %v", deadline.Sub(before), tt.want)
			}
			if tt.upgrade == "" && seen.Err() == nil {
				t.Error("the deadline's context is still live after ServeHTTP returned")
			}
		})
	}
}

// TestRouterTimesOut runs the filter in front of a fake router that, like
// the real one, answers 504 UT when the request's deadline passes first.
func TestRouterTimesOut(t *testing.T) {
	f := build(t, "20ms")
	info := &filters.Info{}
	r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), info), http.MethodGet, "http://b/slow", nil)
	w := httptest.NewRecorder()
	slow := make(chan struct{}) // never closed: the upstream never answers
	start := time.Now()
	f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-slow:
		case <-r.Context().Done():
			filters.Reply(w, r, http.StatusGatewayTimeout, filters.UpstreamTimeout, "upstream request timeout")
		}
	}))
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("answered after %v, before the 20ms deadline", took)
	}
	got := struct {
		Code  int
		Flags string
	}{w.Code, info.Flags().String()}
	want := struct {
		Code  int
		Flags string
	}{http.StatusGatewayTimeout, "UT"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
}
