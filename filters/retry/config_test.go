package retry

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func env() filters.Env {
	return filters.Env{Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now}
}

// decode decodes js the way the config loader does: strictly.
func decode(js string) (*Config, error) {
	d := json.NewDecoder(bytes.NewReader([]byte(js)))
	d.DisallowUnknownFields()
	c := new(Config)
	return c, d.Decode(c)
}

func TestConfigDecode(t *testing.T) {
	c, err := decode(`{"attempts": 3, "on": ["connect-failure", "refused-stream", "reset", "5xx", "gateway-error", "503"],
		"perTryTimeout": "2s", "backoff": "10ms"}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Attempts:      3,
		On:            []string{"connect-failure", "refused-stream", "reset", "5xx", "gateway-error", "503"},
		PerTryTimeout: filters.Duration(2 * time.Second),
		Backoff:       filters.Duration(10 * time.Millisecond),
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("decoded config (-want +got):\n%s", diff)
	}
	for _, js := range []string{`{"attempts": 2, "retryOn": ["5xx"]}`, `{"attempts": 2, "on": [503]}`, `{"backoff": 25}`} {
		if _, err := decode(js); err == nil {
			t.Errorf("decoding %s: no error", js)
		}
	}
}

func TestConfigBuild(t *testing.T) {
	for _, tt := range []struct {
		name, json string
		err        string
	}{
		{"full", `{"attempts": 10, "on": ["connect-failure", "refused-stream", "reset", "5xx", "gateway-error", "503"], "perTryTimeout": "2s", "backoff": "1m"}`, ""},
		{"one attempt", `{"attempts": 1, "on": ["5xx"]}`, ""},
		{"attempts missing", `{"on": ["5xx"]}`, "attempts: must be 1-10, got 0"},
		{"too many attempts", `{"attempts": 11, "on": ["5xx"]}`, "attempts: must be 1-10, got 11"},
		{"negative attempts", `{"attempts": -2, "on": ["5xx"]}`, "attempts: must be 1-10, got -2"},
		{"on missing", `{"attempts": 2}`, `on: required, one or more of connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"on empty", `{"attempts": 2, "on": []}`, `on: required, one or more of connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"unknown condition", `{"attempts": 2, "on": ["reset", "5xx", "5XX"]}`, `on[2]: "5XX" is not connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"Envoy's spelling", `{"attempts": 2, "on": ["connect_failure"]}`, `on[0]: "connect_failure" is not connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"four digits", `{"attempts": 2, "on": ["5030"]}`, `on[0]: "5030" is not connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"signed", `{"attempts": 2, "on": ["+50"]}`, `on[0]: "+50" is not connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`},
		{"success status", `{"attempts": 2, "on": ["5xx", "200"]}`, "on[1]: status code must be 400-599, got 200"},
		{"status beyond 599", `{"attempts": 2, "on": ["600"]}`, "on[0]: status code must be 400-599, got 600"},
		{"negative per-try timeout", `{"attempts": 2, "on": ["5xx"], "perTryTimeout": "-1s"}`, "perTryTimeout: must not be negative, got -1s"},
		{"negative backoff", `{"attempts": 2, "on": ["5xx"], "backoff": "-25ms"}`, "backoff: must not be negative, got -25ms"},
		{"long backoff", `{"attempts": 2, "on": ["5xx"], "backoff": "61s"}`, "backoff: must be at most 1m0s, got 1m1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decode(tt.json)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Build(env())
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("Build() error = %v", err)
			case tt.err != "" && (err == nil || err.Error() != tt.err):
				t.Fatalf("Build() error = %v, want %q", err, tt.err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := decode(`{"attempts": 2, "on": ["5xx"]}`)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Build(env())
	if err != nil {
		t.Fatal(err)
	}
	if r := f.(*Retry); r.backoff != DefaultBackoff || r.perTry != 0 {
		t.Errorf("backoff %v, per-try timeout %v; want %v, 0", r.backoff, r.perTry, DefaultBackoff)
	}
}

func TestConditions(t *testing.T) {
	type outcome struct {
		failure upstream.Kind
		status  int
	}
	var (
		connect  = outcome{upstream.ConnectFailure, 503}
		refused  = outcome{upstream.Refused, 503}
		reset    = outcome{upstream.Reset, 503}
		protocol = outcome{upstream.ProtocolError, 502}
		app500   = outcome{0, 500}
		app502   = outcome{0, 502}
		app503   = outcome{0, 503}
		app504   = outcome{0, 504}
		app409   = outcome{0, 409}
		ok       = outcome{0, 200}
	)
	all := []outcome{connect, refused, reset, protocol, app500, app502, app503, app504, app409, ok}
	for _, tt := range []struct {
		on     []string
		unsent bool
		match  []outcome
	}{
		{[]string{"connect-failure"}, true, []outcome{connect}},
		{[]string{"refused-stream"}, true, []outcome{refused}},
		{[]string{"reset"}, false, []outcome{reset}},
		{[]string{"5xx"}, true, []outcome{connect, refused, reset, protocol, app500, app502, app503, app504}},
		{[]string{"gateway-error"}, true, []outcome{connect, refused, reset, protocol, app502, app503, app504}},
		{[]string{"409"}, false, []outcome{app409}},
		{[]string{"504"}, false, []outcome{app504}},
		{[]string{"reset", "409"}, false, []outcome{reset, app409}},
	} {
		var c conditions
		for _, s := range tt.on {
			if err := c.add(s); err != nil {
				t.Fatal(err)
			}
		}
		if c.unsent() != tt.unsent {
			t.Errorf("%v: unsent() = %v, want %v", tt.on, c.unsent(), tt.unsent)
		}
		for _, o := range all {
			want := false
			for _, m := range tt.match {
				want = want || m == o
			}
			if got := c.match(o.failure, o.status); got != want {
				t.Errorf("%v: match(%v, %d) = %v, want %v", tt.on, o.failure, o.status, got, want)
			}
		}
	}
	var c conditions
	_ = c.add("5xx")
	for _, status := range []int{0, http.StatusOK, 999, -1} {
		if c.match(0, status) {
			t.Errorf("5xx matches status %d", status)
		}
	}
}
