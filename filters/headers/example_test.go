package headers_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/headers"
)

// A headers filter in a chain: it tags the request for the application and
// hides what the application's server says about itself.
func Example() {
	cfg := headers.Config{
		Request: headers.Changes{Set: map[string]string{"x-mesh": "pillion"}},
		Response: headers.Changes{
			Set:    map[string]string{"Server": "pillion"},
			Remove: []string{"X-Powered-By"},
		},
	}
	f, err := cfg.Build(filters.Env{Now: time.Now})
	if err != nil {
		fmt.Println(err)
		return
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("app sees X-Mesh:", r.Header.Get("X-Mesh"))
		w.Header().Set("Server", "gunicorn/22.0")
		w.Header().Set("X-Powered-By", "Django")
		w.WriteHeader(http.StatusOK)
	})
	chain := filters.NewChain(app, filters.Named{Name: "headers", Filter: f})

	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "http://reviews:9080/", nil)
	chain.ServeHTTP(w, r.WithContext(filters.NewContext(r.Context(), &filters.Info{})))
	fmt.Println("client sees Server:", w.Header().Get("Server"))
	fmt.Printf("client sees X-Powered-By: %q\n", w.Header().Get("X-Powered-By"))

	// A config that would break the connection is refused with its path.
	_, err = (&headers.Config{Request: headers.Changes{Set: map[string]string{"Connection": "close"}}}).Build(filters.Env{Now: time.Now})
	fmt.Println(err)
	// Output:
	// app sees X-Mesh: pillion
	// client sees Server: pillion
	// client sees X-Powered-By: ""
	// request.set["Connection"]: "Connection" is hop-by-hop: it belongs to one connection, which the proxy manages
}
