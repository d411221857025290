package authz

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pillionmesh/pillion/filters"
)

const (
	ops      = "spiffe://cluster.local/ns/ops/sa/deployer"
	other    = "spiffe://cluster.local/ns/cart/sa/cart"
	foreign  = "spiffe://other.example/ns/shop/sa/frontend"
	evil     = "spiffe://cluster.local/ns/evil/sa/x"
	noPeer   = ""
	denied   = "no allow rule matched"
	allowed  = "(allowed)"
	denyTCP  = "no allow rule matches a TCP connection"
	shopOnly = "spiffe://cluster.local/ns/shop/*"
)

// policies are the configs the decision tables use.
var policies = map[string]Config{
	"brief":     brief,
	"deny only": {Deny: []Rule{{ID: "*", Paths: []string{"/admin/*"}}, {ID: "spiffe://cluster.local/ns/evil/*"}}},
	"allow only": {Allow: []Rule{
		{ID: shopOnly, Methods: []string{"POST"}},
		{ID: "spiffe://other.example/*"},
	}},
	"same rule both ways": {Allow: []Rule{{ID: "*"}}, Deny: []Rule{{ID: "*", Methods: []string{"DELETE"}}}},
}

// serve sends one request from peer through f and returns the rule that
// denied it ("" when next was reached). A denial must be the proxy's 403,
// and its log line must name the request and the rule; a request that
// reached next returns allowed.
func serve(t *testing.T, cfg Config, peer, method, target string) string {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	env := inbound
	env.Log = zap.New(core)
	f, err := cfg.Build(env)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	info := &filters.Info{Direction: filters.Inbound, Peer: peer}
	r := httptest.NewRequest(method, target, nil)
	r = r.WithContext(filters.NewContext(r.Context(), info))
	w := httptest.NewRecorder()
	w.Header().Set("X-Set-Before", "1") // Reply must clear it
	passed := false
	f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		passed = true
		w.WriteHeader(http.StatusNoContent)
	}))
	if passed {
		if w.Code != http.StatusNoContent || info.Flags() != 0 || logs.Len() != 0 {
			t.Errorf("allowed request: status %d, flags %v, %d log lines; want next's 204, no flags, no log", w.Code, info.Flags(), logs.Len())
		}
		return allowed
	}
	if w.Code != http.StatusForbidden {
		t.Errorf("denied request: status %d, want 403", w.Code)
	}
	if got := info.Flags(); got != filters.Unauthorized {
		t.Errorf("denied request: flags %v, want UAEX", got)
	}
	want := http.Header{
		"Content-Type":           {"text/plain; charset=utf-8"},
		"X-Content-Type-Options": {"nosniff"},
	}
	want.Set(filters.FlagsHeader, "UAEX")
	want.Set(filters.ErrorHeader, "RBAC: access denied")
	if diff := cmp.Diff(want, w.Result().Header); diff != "" {
		t.Errorf("denied request: headers (-want +got):\n%s", diff)
	}
	wantBody := "RBAC: access denied\n"
	if method == http.MethodHead {
		wantBody = ""
	}
	if got := w.Body.String(); got != wantBody {
		t.Errorf("denied request: body %q, want %q", got, wantBody)
	}
	entries := logs.AllUntimed()
	if len(entries) != 1 {
		t.Fatalf("denied request: %d log lines, want 1", len(entries))
	}
	fields := entries[0].ContextMap()
	if entries[0].Level != zap.DebugLevel || fields["peer"] != peer || fields["method"] != method || fields["path"] != r.URL.Path {
		t.Errorf("denied request: log %v %q %v, want debug with peer, method and path", entries[0].Level, entries[0].Message, fields)
	}
	rule, _ := fields["rule"].(string)
	return rule
}

func TestDecide(t *testing.T) {
	for _, tt := range []struct {
		policy, peer, method, path string
		want                       string // the rule that denies, or allowed
	}{
		// Exact ID, any method and path; the deny rule still comes first.
		{"brief", frontend, "DELETE", "/cart/items/7", allowed},
		{"brief", frontend, "POST", "/admin/users", "deny[0]"},
		{"brief", frontend, "GET", "/admin", allowed}, // "/admin/*" is the prefix "/admin/"
		{"brief", frontend + "2", "GET", "/cart", denied},
		// Prefix.
		{"brief", ops, "PUT", "/deploy", allowed},
		{"brief", "spiffe://cluster.local/ns/ops", "GET", "/public/x", allowed}, // by allow[2]
		{"brief", "spiffe://cluster.local/ns/ops", "PUT", "/deploy", denied},    // ns/ops/* needs more
		{"brief", "spiffe://cluster.local/ns/ops-evil/sa/x", "PUT", "/deploy", denied},
		// Trust domain with methods and paths.
		{"brief", other, "GET", "/public/index.html", allowed},
		{"brief", other, "HEAD", "/healthz", allowed},
		{"brief", other, "GET", "/public/", allowed},
		{"brief", other, "POST", "/public/form", denied},
		{"brief", other, "GET", "/public", denied},
		{"brief", other, "GET", "/healthz/", denied},
		{"brief", other, "GET", "/healthz?verbose=1", allowed}, // the query is not the path
		{"brief", foreign, "GET", "/public/x", denied},
		// The unauthenticated caller matches no ID, not even "*".
		{"brief", noPeer, "GET", "/public/x", denied},
		{"brief", noPeer, "GET", "/admin/x", denied},
		{"deny only", noPeer, "GET", "/admin/x", allowed},
		{"deny only", other, "GET", "/admin/x", "deny[0]"},
		{"deny only", other, "GET", "/cart", allowed},
		{"deny only", evil, "GET", "/cart", "deny[1]"},
		{"allow only", noPeer, "POST", "/", denied},
		{"allow only", frontend, "POST", "/orders", allowed},
		{"allow only", frontend, "GET", "/orders", denied},
		{"allow only", foreign, "PATCH", "/x", allowed},
		{"same rule both ways", other, "GET", "/x", allowed},
		{"same rule both ways", other, "DELETE", "/x", "deny[0]"},
		{"same rule both ways", noPeer, "GET", "/x", denied},
		// Paths not in normal form: deny on either form, allow on both.
		{"brief", frontend, "GET", "/public/../admin/users", "deny[0]"},
		{"brief", frontend, "GET", "//admin/users", "deny[0]"},
		{"brief", frontend, "GET", "/admin/./users", "deny[0]"},
		{"brief", frontend, "GET", "/admin/../cart", "deny[0]"},
		{"brief", frontend, "GET", "/admin%2fusers", "deny[0]"}, // decoded
		{"brief", frontend, "GET", "/%61dmin/users", "deny[0]"},
		{"brief", frontend, "GET", "/cart/../orders", allowed},
		{"brief", other, "GET", "/public/./a", allowed},
		{"brief", other, "GET", "/public//a", allowed},
		{"brief", other, "GET", "/public/../secret", denied},
		{"brief", other, "GET", "/secret/../public/a", denied},
		{"brief", other, "GET", "/public/a/..", allowed}, // "/public/"
		{"brief", other, "GET", "/public/..", denied},    // "/"
		{"brief", other, "HEAD", "/x/../healthz", denied},
		{"brief", other, "HEAD", "/secret", denied}, // a HEAD 403 has no body
	} {
		t.Run(tt.policy+" "+tt.peer+" "+tt.method+" "+tt.path, func(t *testing.T) {
			got := serve(t, policies[tt.policy], tt.peer, tt.method, "http://app:8080"+tt.path)
			if got != tt.want {
				t.Errorf("denied by %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"/":             "/",
		"/a/b":          "/a/b",
		"/a/b/":         "/a/b/",
		"/.env":         "/.env",
		"/a/../b":       "/b",
		"/a/./b/":       "/a/b/",
		"//a///b":       "/a/b",
		"/a/.":          "/a/",
		"/a/b/..":       "/a/",
		"/..":           "/",
		"/../../":       "/",
		"*":             "*",
		"":              "",
		"/a/..b/.c/..d": "/a/..b/.c/..d",
	} {
		if got := normalize(in); got != want {
			t.Errorf("normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAuthorizeConn(t *testing.T) {
	for _, tt := range []struct {
		policy, peer string
		want         string // the error, "" for nil
	}{
		// Deny rules with paths deny on their ID alone.
		{"brief", frontend, `peer "` + frontend + `" denied by deny[0] (applied on its id alone: a TCP connection has no method or path)`},
		{"brief", ops, `peer "` + ops + `" denied by deny[0] (applied on its id alone: a TCP connection has no method or path)`},
		{"brief", noPeer, "unauthenticated peer (no mTLS) denied: " + denyTCP},
		{"deny only", other, `peer "` + other + `" denied by deny[0] (applied on its id alone: a TCP connection has no method or path)`},
		{"deny only", noPeer, ""},
		{"deny evil", evil, `peer "` + evil + `" denied by deny[0]`},
		{"deny evil", other, ""},
		// Allow rules with methods or paths never match.
		{"allow only", frontend, `peer "` + frontend + `" denied: ` + denyTCP},
		{"allow only", foreign, ""},
		{"allow only", noPeer, "unauthenticated peer (no mTLS) denied: " + denyTCP},
		{"allow frontend", frontend, ""},
		{"allow frontend", other, `peer "` + other + `" denied: ` + denyTCP},
	} {
		t.Run(tt.policy+" "+tt.peer, func(t *testing.T) {
			cfg, ok := policies[tt.policy]
			switch tt.policy {
			case "deny evil":
				cfg, ok = Config{Deny: []Rule{{ID: "spiffe://cluster.local/ns/evil/*"}}}, true
			case "allow frontend":
				cfg, ok = Config{Allow: []Rule{{ID: "*", Paths: []string{"/"}}, {ID: frontend}}}, true
			}
			if !ok {
				t.Fatalf("no policy %q", tt.policy)
			}
			f, err := cfg.Build(inbound)
			if err != nil {
				t.Fatal(err)
			}
			err = f.(filters.ConnAuthorizer).AuthorizeConn(tt.peer)
			var got string
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("AuthorizeConn = %q\nwant             %q", got, tt.want)
			}
		})
	}
}
