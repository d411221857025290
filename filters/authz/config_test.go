package authz

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

const (
	frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	// briefJSON is the documented example, as the loader hands it over
	// (YAML converted to JSON).
	briefJSON = `{
		"allow": [
			"spiffe://cluster.local/ns/shop/sa/frontend",
			{"id": "spiffe://cluster.local/ns/ops/*"},
			{"id": "spiffe://cluster.local/*", "methods": ["GET", "HEAD"], "paths": ["/public/*", "/healthz"]}
		],
		"deny": [{"id": "*", "paths": ["/admin/*"]}]
	}`
)

// brief is briefJSON decoded.
var brief = Config{
	Allow: []Rule{
		{ID: frontend},
		{ID: "spiffe://cluster.local/ns/ops/*"},
		{ID: "spiffe://cluster.local/*", Methods: []string{"GET", "HEAD"}, Paths: []string{"/public/*", "/healthz"}},
	},
	Deny: []Rule{{ID: "*", Paths: []string{"/admin/*"}}},
}

var inbound = filters.Env{Direction: filters.Inbound, Log: zap.NewNop(), Now: time.Now}

func TestDecode(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Config
	}{
		{briefJSON, brief},
		{`{}`, Config{}},
		{`null`, Config{}},
		{`{"allow": null, "deny": []}`, Config{Deny: []Rule{}}},
		{`{"deny": [{"id": "*", "methods": null, "paths": []}]}`, Config{Deny: []Rule{{ID: "*", Paths: []string{}}}}},
		{`{"allow": [""]}`, Config{Allow: []Rule{{}}}}, // Build says why
	} {
		t.Run(tt.in, func(t *testing.T) {
			var got Config
			if err := json.Unmarshal([]byte(tt.in), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decoded (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`[]`, "want a mapping, got list"},
		{`{"allows": []}`, "allows: unknown field (known: allow, deny)"},
		{`{"allow": "spiffe://cluster.local/x"}`, "allow: want a list, got string"},
		{`{"deny": {"id": "*"}}`, "deny: want a list, got mapping"},
		{`{"allow": ["spiffe://cluster.local/x", 42]}`, "allow[1]: want a SPIFFE ID pattern or a mapping {id, methods, paths}, got number"},
		{`{"allow": [null]}`, "allow[0]: want a SPIFFE ID pattern or a mapping {id, methods, paths}, got null"},
		{`{"allow": [["*"]]}`, "allow[0]: want a SPIFFE ID pattern or a mapping {id, methods, paths}, got list"},
		{`{"deny": [{"id": "*", "method": ["GET"]}]}`, "deny[0].method: unknown field (known: id, methods, paths)"},
		{`{"allow": [{"id": 7}]}`, "allow[0].id: want a string, got number"},
		{`{"allow": [{"id": "*", "methods": "GET"}]}`, "allow[0].methods: want a list, got string"},
		{`{"allow": ["*", {"id": "*", "paths": ["/a", true]}]}`, "allow[1].paths[1]: want a string, got bool"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			var got Config
			err := json.Unmarshal([]byte(tt.in), &got)
			if err == nil {
				t.Fatalf("decoded %+v, want an error", got)
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q\nwant    %q", err, tt.want)
			}
			if fe := (*filters.FieldError)(nil); !errors.As(err, &fe) {
				t.Errorf("error is a %T, want a *filters.FieldError", err)
			}
		})
	}
}

// TestMarshalRoundTrip: what /config_dump would print decodes back.
func TestMarshalRoundTrip(t *testing.T) {
	b, err := json.Marshal(brief)
	if err != nil {
		t.Fatal(err)
	}
	var got Config
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	if diff := cmp.Diff(brief, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// decoded is the Config of the JSON in, which must decode.
func decoded(t *testing.T, in string) Config {
	t.Helper()
	var c Config
	if err := json.Unmarshal([]byte(in), &c); err != nil {
		t.Fatalf("decoding %s: %v", in, err)
	}
	return c
}

func TestBuildInvalid(t *testing.T) {
	id := func(s string) Config { return Config{Allow: []Rule{{ID: s}}} }
	method := func(m string) Config { return Config{Deny: []Rule{{ID: "*"}, {ID: "*", Methods: []string{"GET", m}}}} }
	path := func(p string) Config { return Config{Allow: []Rule{{ID: "*", Paths: []string{p}}}} }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no rules", Config{}, "want at least one rule in allow or deny"},
		{"empty lists", Config{Allow: []Rule{}, Deny: []Rule{}}, "want at least one rule in allow or deny"},
		{"no id", Config{Deny: []Rule{{Paths: []string{"/admin/*"}}}},
			`deny[0].id: required: a SPIFFE ID, a SPIFFE ID followed by /* for the IDs below it, or "*" for any authenticated caller`},
		// null decodes as no ID (as encoding/json), and no ID is refused.
		{"null id", decoded(t, `{"allow": [{"id": null}]}`),
			`allow[0].id: required: a SPIFFE ID, a SPIFFE ID followed by /* for the IDs below it, or "*" for any authenticated caller`},
		{"bad scheme", id("spiffe:/x"), `allow[0].id: "spiffe:/x": not a SPIFFE ID: scheme is missing or invalid`},
		{"bare name", id("frontend"), `allow[0].id: "frontend": not a SPIFFE ID: scheme is missing or invalid`},
		{"upper-case trust domain", id("spiffe://Cluster.local/ns/a"),
			`allow[0].id: "spiffe://Cluster.local/ns/a": not a SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{"trailing slash", id("spiffe://cluster.local/ns/a/"),
			`allow[0].id: "spiffe://cluster.local/ns/a/": not a SPIFFE ID: path cannot have a trailing slash`},
		{"prefix without trust domain", id("spiffe:///*"),
			`allow[0].id: "spiffe:///*": "spiffe://" before /* is not a SPIFFE ID: trust domain is missing`},
		{"prefix with dot segment", id("spiffe://cluster.local/ns/../*"),
			`allow[0].id: "spiffe://cluster.local/ns/../*": "spiffe://cluster.local/ns/.." before /* is not a SPIFFE ID: path cannot contain dot segments`},
		{"star inside", id("spiffe://cluster.local/ns/*/sa/x"),
			`allow[0].id: "spiffe://cluster.local/ns/*/sa/x": "*" may only be the whole pattern or follow the last "/", as in "spiffe://cluster.local/ns/shop/*"`},
		{"star ending a segment", id("spiffe://cluster.local/ns/shop*"),
			`allow[0].id: "spiffe://cluster.local/ns/shop*": "*" may only be the whole pattern or follow the last "/", as in "spiffe://cluster.local/ns/shop/*"`},
		{"lower-case method", method("post"), `deny[1].methods[1]: "post": methods are case-sensitive and upper-case, such as "POST"`},
		{"star method", method("*"), `deny[1].methods[1]: "*" is not a method: leave methods out to match any method`},
		{"method with space", method("GE T"), `deny[1].methods[1]: "GE T" is not an HTTP method`},
		{"empty method", method(""), `deny[1].methods[1]: "" is not an HTTP method`},
		{"relative path", path("api/*"), `allow[0].paths[0]: "api/*": want a URL path starting with "/", such as "/api/*"`},
		{"empty path", path(""), `allow[0].paths[0]: "": want a URL path starting with "/", such as "/api/*"`},
		{"star path", path("*"), `allow[0].paths[0]: "*" is not a path: leave paths out to match any path, or write "/*"`},
		{"star inside path", path("/api/*/v1"), `allow[0].paths[0]: "/api/*/v1": "*" may only end a path, to match the paths that start with what comes before it`},
		{"suffix match", path("*.html"), `allow[0].paths[0]: "*.html": want a URL path starting with "/", such as "/api/*"`},
		{"query", path("/search?q=1"), `allow[0].paths[0]: "/search?q=1": paths match the URL path alone, without query or fragment`},
		{"doubled slash", path("/a//b"), `allow[0].paths[0]: "/a//b": has an empty, "." or ".." segment, which a normalised path never has`},
		{"dot-dot", path("/a/../b/*"), `allow[0].paths[0]: "/a/../b/*": has an empty, "." or ".." segment, which a normalised path never has`},
		{"trailing dot", path("/a/."), `allow[0].paths[0]: "/a/.": has an empty, "." or ".." segment, which a normalised path never has`},
		{"deny reported first", Config{Allow: []Rule{{ID: "x"}}, Deny: []Rule{{ID: "y"}}},
			`deny[0].id: "y": not a SPIFFE ID: scheme is missing or invalid`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := tt.cfg.Build(inbound)
			if err == nil {
				t.Fatalf("Build = %v, want an error", f)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error = %q\nwant    %q", got, tt.want)
			}
		})
	}
}

func TestBuildValid(t *testing.T) {
	for _, r := range []Rule{
		{ID: "*"},
		{ID: "spiffe://cluster.local"}, // a trust domain's own ID
		{ID: "spiffe://cluster.local/*"},
		{ID: "spiffe://cluster.local/ns/shop/*"},
		{ID: frontend, Methods: []string{"GET", "PURGE", "GET"}},
		{ID: "*", Paths: []string{"/", "/*", "/a/", "/.*", "/a/..*", "/v1.2/items*"}},
	} {
		if _, err := (&Config{Allow: []Rule{r}}).Build(inbound); err != nil {
			t.Errorf("Build(%+v): %v", r, err)
		}
	}
}

func TestBuildOutbound(t *testing.T) {
	for _, env := range []filters.Env{{Direction: filters.Outbound, Log: zap.NewNop(), Now: time.Now}, {}} {
		f, err := brief.Build(env)
		if err == nil {
			t.Fatalf("Build(%v) = %v, want an error", env.Direction, f)
		}
		const want = "authz polices callers by their SPIFFE ID, which only inbound requests carry: it may only be used in the inbound chain"
		if err.Error() != want {
			t.Errorf("error = %q\nwant    %q", err, want)
		}
		if fe := (*filters.FieldError)(nil); !errors.As(err, &fe) {
			t.Errorf("error is a %T, want a *filters.FieldError", err)
		}
	}
}
