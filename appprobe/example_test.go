package appprobe_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/pillionmesh/pillion/appprobe"
)

// The injector writes the original probes; the sidecar parses them.
func ExampleParse() {
	s := appprobe.Set{
		appprobe.Path("app", appprobe.Readiness): {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: 8080}},
		appprobe.Path("app", appprobe.Liveness):  {TCPSocket: &appprobe.TCPSocket{Port: 8080}, TimeoutSeconds: 5},
	}
	env := s.Encode() // PILLION_APP_PROBES
	fmt.Println(env)

	back, err := appprobe.Parse(env)
	fmt.Println(len(back), err)

	_, err = appprobe.Parse(`{"/app-health/app/readyz": {"httpGet": {"path": "/ready"}}}`)
	fmt.Println(err)
	// Output:
	// {"/app-health/app/livez":{"tcpSocket":{"port":8080},"timeoutSeconds":5},"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080}}}
	// 2 <nil>
	// "/app-health/app/readyz": httpGet.port: 0: not a port (1-65535)
}

// The sidecar's health port answers kubelet's rewritten probe by running
// the original one.
func ExampleNewHandler() {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "warming up", http.StatusServiceUnavailable)
	}))
	defer app.Close()
	port := int32(app.Listener.Addr().(*net.TCPAddr).Port)

	h := appprobe.NewHandler(appprobe.Set{
		appprobe.Path("app", appprobe.Readiness): {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: port}},
	}, appprobe.Options{}) // outside a pod: 127.0.0.1
	for _, path := range []string{"/app-health/app/readyz", "/app-health/app/livez"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		fmt.Println(path, rec.Code, strings.HasSuffix(rec.Body.String(), "/ready: 503 Service Unavailable: warming up\n"))
	}
	// Output:
	// /app-health/app/readyz 503 true
	// /app-health/app/livez 404 false
}
