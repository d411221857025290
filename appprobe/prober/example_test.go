package prober_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
)

// The sidecar's health port answers kubelet's rewritten probe by running
// the original one.
func ExampleNewHandler() {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "warming up", http.StatusServiceUnavailable)
	}))
	defer app.Close()
	port := int32(app.Listener.Addr().(*net.TCPAddr).Port)

	h := prober.NewHandler(appprobe.Set{
		appprobe.Path("app", appprobe.Readiness): {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: port}},
	}, prober.Options{}) // outside a pod: 127.0.0.1
	for _, path := range []string{"/app-health/app/readyz", "/app-health/app/livez"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		fmt.Println(path, rec.Code, strings.HasSuffix(rec.Body.String(), "/ready: 503 Service Unavailable: warming up\n"))
	}
	// Output:
	// /app-health/app/readyz 503 true
	// /app-health/app/livez 404 false
}
