package prober_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
)

func ptr[T any](v T) *T { return &v }

// port is the port of a listener's address.
func port(t *testing.T, l net.Listener) int32 {
	t.Helper()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// closedPort is a loopback port nothing listens on, a moment ago.
func closedPort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := port(t, l)
	l.Close()
	return p
}

// get runs one probe through a Handler as kubelet would ask for it.
func get(t *testing.T, p appprobe.Probe) (code int, body string, header http.Header) {
	t.Helper()
	path := appprobe.Path("app", appprobe.Readiness)
	h := prober.NewHandler(appprobe.Set{path: p}, prober.Options{})
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Header.Set("User-Agent", "kube-probe/1.34")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String(), rec.Header()
}

func TestHTTPGet(t *testing.T) {
	var redirectFollowed atomic.Bool
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusOK)
		case "/moved":
			http.Redirect(w, r, "/broken", http.StatusFound)
		case "/broken":
			redirectFollowed.Store(true)
			http.Error(w, "should not be reached", http.StatusInternalServerError)
		case "/fail":
			http.Error(w, "database\nis down", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	}))
	defer app.Close()
	p := port(t, app.Listener)
	base := "GET http://127.0.0.1:" + strconv.Itoa(int(p))
	for _, tt := range []struct {
		name string
		path string
		code int
		body string
	}{
		{"200 passes", "/ok", 200, base + "/ok: 200 OK\n"},
		{"302 passes, not followed", "/moved", 302, base + "/moved: 302 Found\n"},
		{"500 fails as 500", "/fail", 500, base + "/fail: 500 Internal Server Error: database is down\n"},
		{"404 fails as 404", "/nope", 404, base + "/nope: 404 Not Found: 404 page not found\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body, header := get(t, appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: tt.path, Port: p}})
			if code != tt.code || body != tt.body {
				t.Errorf("got %d %q, want %d %q", code, body, tt.code, tt.body)
			}
			if loc := header.Get("Location"); loc != "" {
				t.Errorf("Location %q passed on: kubelet would follow it to the health port", loc)
			}
		})
	}
	if redirectFollowed.Load() {
		t.Error("the redirect was followed")
	}
}

func TestHTTPGetRefused(t *testing.T) {
	code, body, _ := get(t, appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: "/ok", Port: closedPort(t)}})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("got %d %q, want 503 saying the connection was refused", code, body)
	}
}

// TestHTTPGetTimeout: a timeoutSeconds of 0 is 1s, as kubelet's default;
// an application slower than that fails the probe at about 1s.
func TestHTTPGetTimeout(t *testing.T) {
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer app.Close()
	defer close(release)
	start := time.Now()
	code, body, _ := get(t, appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Port: port(t, app.Listener)}})
	took := time.Since(start)
	if code != http.StatusServiceUnavailable || !strings.HasSuffix(body, ": no answer within 1s\n") {
		t.Errorf("got %d %q, want 503 saying it timed out", code, body)
	}
	if took < 900*time.Millisecond || took > 2*time.Second {
		t.Errorf("the probe took %s, want about its 1s time-out", took)
	}
}

func TestHTTPGetSendsHeaders(t *testing.T) {
	type seen struct{ host, query, custom, userAgent, accept string }
	got := make(chan seen, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Host, r.URL.RawQuery, strings.Join(r.Header.Values("X-Custom"), ","), r.UserAgent(), r.Header.Get("Accept")}
	}))
	defer app.Close()
	code, body, _ := get(t, appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: "/ready?full=1", Port: port(t, app.Listener),
		HTTPHeaders: []appprobe.Header{{Name: "Host", Value: "app.example"}, {Name: "X-Custom", Value: "a"}, {Name: "X-Custom", Value: "b"}}}})
	if code != http.StatusOK {
		t.Fatalf("got %d %q", code, body)
	}
	want := seen{host: "app.example", query: "full=1", custom: "a,b", userAgent: "kube-probe/1.34", accept: "*/*"}
	if diff := cmp.Diff(want, <-got, cmp.AllowUnexported(seen{})); diff != "" {
		t.Errorf("the application saw (-want +got):\n%s", diff)
	}
}

func TestHTTPGetHTTPS(t *testing.T) {
	app := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer app.Close()
	code, body, _ := get(t, appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: port(t, app.Listener), Scheme: "HTTPS"}})
	if code != http.StatusNoContent {
		t.Errorf("got %d %q, want the self-signed application's 204", code, body)
	}
}

func TestTCPSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, body, _ := get(t, appprobe.Probe{TCPSocket: &appprobe.TCPSocket{Port: port(t, l)}})
	if want := "tcp " + l.Addr().String() + ": connected\n"; code != http.StatusOK || body != want {
		t.Errorf("open port: got %d %q, want 200 %q", code, body, want)
	}
	code, body, _ = get(t, appprobe.Probe{TCPSocket: &appprobe.TCPSocket{Port: closedPort(t), Host: "127.0.0.1"}})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("closed port: got %d %q, want 503 saying the connection was refused", code, body)
	}
}

func TestGRPC(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("cache", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	p := port(t, l)
	for _, tt := range []struct {
		name    string
		port    int32
		service *string
		code    int
		body    string
	}{
		{"the server serving", p, nil, 200, `service "": SERVING`},
		{"a service serving", p, ptr("db"), 200, `service "db": SERVING`},
		{"a service not serving", p, ptr("cache"), 503, `service "cache": NOT_SERVING`},
		{"an unknown service", p, ptr("nope"), 503, "code = NotFound"},
		{"no server", closedPort(t), nil, 503, "code = Unavailable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body, _ := get(t, appprobe.Probe{GRPC: &appprobe.GRPC{Port: tt.port, Service: tt.service}})
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Errorf("got %d %q, want %d and %q", code, body, tt.code, tt.body)
			}
		})
	}
}

func TestHandlerRefuses(t *testing.T) {
	path := appprobe.Path("app", appprobe.Readiness)
	h := prober.NewHandler(appprobe.Set{
		path:                                    {TCPSocket: &appprobe.TCPSocket{Port: closedPort(t)}},
		appprobe.Path("app", appprobe.Liveness): {TCPSocket: &appprobe.TCPSocket{Port: 0}},
	}, prober.Options{})
	for _, tt := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/app-health/other/readyz", 404, "prober: no probe at /app-health/other/readyz\n"},
		{"GET", path + "/", 404, "prober: no probe at /app-health/app/readyz/\n"},
		{"POST", path, 405, "prober: /app-health/app/readyz is probed with GET\n"},
		{"GET", "/app-health/app/livez", 500,
			`prober: invalid probe: appprobe: "/app-health/app/livez": tcpSocket.port: 0: not a port (1-65535)` + "\n"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != tt.code || rec.Body.String() != tt.body {
			t.Errorf("%s %s: got %d %q, want %d %q", tt.method, tt.path, rec.Code, rec.Body.String(), tt.code, tt.body)
		}
	}
}
