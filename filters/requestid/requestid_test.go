package requestid

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func env() filters.Env { return filters.Env{Now: time.Now} }

// serve runs one request with the given headers through the filter built
// from c and returns the headers next saw.
func serve(t *testing.T, c Config, in http.Header) http.Header {
	t.Helper()
	f, err := c.Build(env())
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	r := httptest.NewRequest(http.MethodGet, "http://b/x", nil)
	for k, v := range in {
		r.Header[k] = v
	}
	var seen http.Header
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.WriteHeader(http.StatusNoContent)
	})
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r, next)
	if seen == nil {
		t.Fatal("next was not called")
	}
	if w.Code != http.StatusNoContent {
		t.Errorf("status = %d, want the next handler's 204", w.Code)
	}
	return seen
}

func TestServeHTTP(t *testing.T) {
	const (
		traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		tracestate  = "congo=t61rcWkgMzE"
	)
	for _, tt := range []struct {
		name   string
		cfg    Config
		in     http.Header
		key    string // the ID's header, canonical
		keep   []string
		others http.Header // headers that must come through unchanged
	}{
		{name: "none: default header gets a UUID", key: "X-Request-Id"},
		{name: "present: kept", in: http.Header{"X-Request-Id": {"abc-123"}}, key: "X-Request-Id", keep: []string{"abc-123"}},
		{name: "several values: all kept", in: http.Header{"X-Request-Id": {"a", "b"}}, key: "X-Request-Id", keep: []string{"a", "b"}},
		{name: "empty value: replaced", in: http.Header{"X-Request-Id": {""}}, key: "X-Request-Id"},
		{name: "own header", cfg: Config{Header: "x-correlation-id"}, in: http.Header{"X-Request-Id": {"other"}},
			key: "X-Correlation-Id", others: http.Header{"X-Request-Id": {"other"}}},
		{name: "own header present", cfg: Config{Header: "X-Correlation-ID"}, in: http.Header{"X-Correlation-Id": {"c1"}},
			key: "X-Correlation-Id", keep: []string{"c1"}},
		{name: "trace context untouched, no ID", in: http.Header{"Traceparent": {traceparent}, "Tracestate": {tracestate}},
			key: "X-Request-Id", others: http.Header{"Traceparent": {traceparent}, "Tracestate": {tracestate}}},
		{name: "trace context untouched, ID kept",
			in:  http.Header{"Traceparent": {traceparent}, "Tracestate": {tracestate}, "X-Request-Id": {"r"}},
			key: "X-Request-Id", keep: []string{"r"}, others: http.Header{"Traceparent": {traceparent}, "Tracestate": {tracestate}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seen := serve(t, tt.cfg, tt.in)
			got := seen[tt.key]
			if tt.keep != nil {
				if diff := cmp.Diff(tt.keep, got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", tt.key, diff)
				}
			} else if len(got) != 1 || !uuidV4.MatchString(got[0]) {
				t.Errorf("%s = %q, want one UUID v4", tt.key, got)
			}
			for k, want := range tt.others {
				if diff := cmp.Diff(want, seen[k]); diff != "" {
					t.Errorf("%s changed (-want +got):\n%s", k, diff)
				}
			}
			if want := len(tt.others) + 1; len(seen) != want {
				t.Errorf("next saw %d headers, want %d: %v", len(seen), want, seen)
			}
		})
	}
}

func TestNewUUIDDiffers(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		id := newUUID()
		if !uuidV4.MatchString(id) {
			t.Fatalf("newUUID() = %q, not a UUID v4", id)
		}
		if seen[id] {
			t.Fatalf("newUUID() returned %q twice", id)
		}
		seen[id] = true
	}
}

func TestBuildInvalid(t *testing.T) {
	for _, tt := range []struct {
		header string
		want   string
	}{
		{"x request id", `header: "x request id" is not a valid header name`},
		{":authority", `header: ":authority" is not a valid header name`},
		{"traceparent", `header: "traceparent" is W3C trace context, which the proxy never changes`},
		{"TraceState", `header: "TraceState" is W3C trace context, which the proxy never changes`},
		{"host", `header: "host" is the request's authority, not a header for an ID`},
		{"Connection", `header: "Connection" is hop-by-hop: it is never forwarded`},
		{"te", `header: "te" is hop-by-hop: it is never forwarded`},
	} {
		t.Run(tt.header, func(t *testing.T) {
			f, err := (&Config{Header: tt.header}).Build(env())
			if err == nil {
				t.Fatalf("Build = %v, want an error", f)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error = %q\nwant    %q", got, tt.want)
			}
		})
	}
}

// TestDecode: the config file's field name, decoded as the loader does.
func TestDecode(t *testing.T) {
	var c Config
	d := json.NewDecoder(strings.NewReader(`{"header": "x-correlation-id"}`))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil || c.Header != "x-correlation-id" {
		t.Errorf("Decode = %+v, %v; want header x-correlation-id", c, err)
	}
}
