package authz_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/authz"
)

// An inbound policy: the frontend may call anything, the rest of the
// cluster only GETs public pages, and nobody reaches /admin.
func Example() {
	var cfg authz.Config
	err := json.Unmarshal([]byte(`{
		"allow": [
			"spiffe://cluster.local/ns/shop/sa/frontend",
			{"id": "spiffe://cluster.local/*", "methods": ["GET"], "paths": ["/public/*"]}
		],
		"deny": [{"id": "*", "paths": ["/admin/*"]}]
	}`), &cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	f, err := cfg.Build(inbound)
	if err != nil {
		fmt.Println(err)
		return
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") })
	chain := filters.NewChain(app, filters.Named{Name: "authz", Filter: f})

	for _, c := range []struct{ peer, method, path string }{
		{"spiffe://cluster.local/ns/shop/sa/frontend", "POST", "/orders"},
		{"spiffe://cluster.local/ns/shop/sa/frontend", "GET", "/admin/users"},
		{"spiffe://cluster.local/ns/cart/sa/cart", "GET", "/public/logo.png"},
		{"spiffe://cluster.local/ns/cart/sa/cart", "POST", "/orders"},
		{"", "GET", "/public/logo.png"}, // plaintext, PERMISSIVE mode
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(c.method, "http://shop:8080"+c.path, nil)
		chain.ServeHTTP(w, r.WithContext(filters.NewContext(r.Context(), &filters.Info{Direction: filters.Inbound, Peer: c.peer})))
		fmt.Printf("%s %s from %q: %d %s", c.method, c.path, c.peer, w.Code, strings.TrimSpace(w.Body.String()))
		if flags := w.Header().Get(filters.FlagsHeader); flags != "" {
			fmt.Printf(" [%s]", flags)
		}
		fmt.Println()
	}

	// An opaque TCP connection: the deny rule's path cannot be checked,
	// so it denies on its id alone.
	fmt.Println(chain.AuthorizeConn("spiffe://cluster.local/ns/shop/sa/frontend"))
	// Output:
	// POST /orders from "spiffe://cluster.local/ns/shop/sa/frontend": 200 hello
	// GET /admin/users from "spiffe://cluster.local/ns/shop/sa/frontend": 403 RBAC: access denied [UAEX]
	// GET /public/logo.png from "spiffe://cluster.local/ns/cart/sa/cart": 200 hello
	// POST /orders from "spiffe://cluster.local/ns/cart/sa/cart": 403 RBAC: access denied [UAEX]
	// GET /public/logo.png from "": 403 RBAC: access denied [UAEX]
	// authz: peer "spiffe://cluster.local/ns/shop/sa/frontend" denied by deny[0] (applied on its id alone: a TCP connection has no method or path)
}
