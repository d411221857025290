package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// do sends one request to h and returns the recorded answer.
func do(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// check asserts an answer's status and exact body.
func check(t *testing.T, rec *httptest.ResponseRecorder, code int, body string) {
	t.Helper()
	if rec.Code != code {
		t.Errorf("status = %d, want %d; body:\n%s", rec.Code, code, rec.Body)
	}
	if diff := cmp.Diff(body, rec.Body.String()); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
}

// checkJSON asserts a 200 JSON answer equal, as JSON, to want.
func checkJSON(t *testing.T, rec *httptest.ResponseRecorder, want string) {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200; body:\n%s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var got, exp any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, rec.Body)
	}
	if err := json.Unmarshal([]byte(want), &exp); err != nil {
		t.Fatalf("want is not JSON: %v", err)
	}
	if diff := cmp.Diff(exp, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}

const wantHelp = `admin commands are:
  /: print this list of admin paths
  /certs: print the workload SVID and trust bundle with expiry as JSON
  /clusters: print upstream pools, their endpoints and counters; ?format=json
  /config_dump: print the effective config as JSON, secrets redacted
  /debug/pprof/: Go runtime profiles (net/http/pprof)
  /drain (POST): fail readiness, accept for the drain period, then stop accepting and let in-flight requests finish
  /healthcheck/fail (POST): mark the server as failing health checks (DRAINING)
  /healthcheck/ok (POST): clear the failed health-check mark
  /help: print this list of admin paths
  /listeners: print the listeners and their addresses; ?format=json
  /logging (POST): print the log level, or change it with ?level=debug|info|warn|error
  /quitquitquit (POST): drain without the drain period, then exit the process
  /ready: print the server state; 200 when LIVE, else 503 and why
  /server_info: print version, state, uptime and command-line options as JSON
  /stats: print metrics as name: value; ?format=json|prometheus, ?filter=<regex>
  /stats/prometheus: print metrics in the Prometheus text format; ?filter=<regex>
`

func TestHelpAndNotFound(t *testing.T) {
	h := New(Sources{}, zap.NewNop())
	check(t, do(t, h, "GET", "/"), 200, wantHelp)
	check(t, do(t, h, "GET", "/help"), 200, wantHelp)
	check(t, do(t, h, "GET", "/nope"), 404, "admin: no such path \"/nope\"\n"+wantHelp)
	check(t, do(t, h, "GET", "/ready/"), 404, "admin: no such path \"/ready/\"\n"+wantHelp)
	rec := do(t, h, "GET", "/help")
	for k, v := range map[string]string{
		"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache, max-age=0", "X-Content-Type-Options": "nosniff",
	} {
		if got := rec.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestReady(t *testing.T) {
	tests := []struct {
		name  string
		ready func() (string, error)
		code  int
		body  string
	}{
		{"live", func() (string, error) { return "LIVE", nil }, 200, "LIVE\n"},
		{"empty state is LIVE", func() (string, error) { return "", nil }, 200, "LIVE\n"},
		{"draining", func() (string, error) { return "DRAINING", errors.New("shutting down") }, 503, "DRAINING\nshutting down\n"},
		{"pre-initializing", func() (string, error) { return "PRE_INITIALIZING", errors.New("identity: no SVID yet") }, 503,
			"PRE_INITIALIZING\nidentity: no SVID yet\n"},
		{"empty state not ready", func() (string, error) { return "", errors.New("listeners not bound") }, 503,
			"INITIALIZING\nlisteners not bound\n"},
		{"no source", nil, 503, "admin: /ready is not available\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, do(t, New(Sources{Ready: tt.ready}, nil), "GET", "/ready"), tt.code, tt.body)
		})
	}
}

func TestLogging(t *testing.T) {
	const bad = "logging: unknown level \"loud\": valid levels are debug, info, warn, error\n"
	tests := []struct {
		target string
		code   int
		body   string
		level  zapcore.Level // after the request; starts at info
	}{
		{"/logging", 200, "level: info\n", zapcore.InfoLevel},
		{"/logging?level=debug", 200, "level: debug\n", zapcore.DebugLevel},
		{"/logging?level=warn", 200, "level: warn\n", zapcore.WarnLevel},
		{"/logging?level=warning", 200, "level: warn\n", zapcore.WarnLevel},
		{"/logging?level=error", 200, "level: error\n", zapcore.ErrorLevel},
		{"/logging?level=loud", 400, bad, zapcore.InfoLevel},
		{"/logging?level=", 400, "logging: unknown level \"\": valid levels are debug, info, warn, error\n", zapcore.InfoLevel},
		{"/logging?lvl=debug", 400, "logging: missing ?level=: valid levels are debug, info, warn, error\n", zapcore.InfoLevel},
		{"/logging?level=panic", 400, "logging: unknown level \"panic\": valid levels are debug, info, warn, error\n", zapcore.InfoLevel},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			lvl := zap.NewAtomicLevelAt(zapcore.InfoLevel)
			check(t, do(t, New(Sources{Level: lvl}, nil), "POST", tt.target), tt.code, tt.body)
			if got := lvl.Level(); got != tt.level {
				t.Errorf("level = %v, want %v", got, tt.level)
			}
		})
	}
	t.Run("no level source", func(t *testing.T) {
		check(t, do(t, New(Sources{}, nil), "POST", "/logging?level=debug"), 503, "admin: /logging is not available\n")
	})
}

func TestControls(t *testing.T) {
	var drains, quits, fails, oks int
	src := Sources{
		Drain: func() { drains++ },
		Quit:  func() { quits++ },
		HealthFail: func(fail bool) {
			if fail {
				fails++
			} else {
				oks++
			}
		},
		Level: zap.NewAtomicLevelAt(zapcore.InfoLevel),
	}
	h := New(src, nil)
	counts := map[string]*int{"/drain": &drains, "/quitquitquit": &quits, "/healthcheck/fail": &fails, "/healthcheck/ok": &oks}

	// A GET (or PUT) on a POST-only path is refused and calls nothing.
	for path := range counts {
		for _, m := range []string{"GET", "HEAD", "PUT"} {
			rec := do(t, h, m, path) // the recorder keeps HEAD bodies; a real server drops them
			check(t, rec, 405, "admin: "+path+" changes the server; use POST\n")
			if got := rec.Header().Get("Allow"); got != "POST" {
				t.Errorf("%s %s: Allow = %q, want POST", m, path, got)
			}
		}
	}
	check(t, do(t, h, "GET", "/logging?level=debug"), 405, "admin: /logging changes the server; use POST\n")
	if got := src.Level.Level(); got != zapcore.InfoLevel {
		t.Errorf("GET /logging changed the level to %v", got)
	}
	for path, n := range counts {
		if *n != 0 {
			t.Fatalf("%s called %d times by refused requests", path, *n)
		}
	}

	for path := range counts {
		check(t, do(t, h, "POST", path), 200, "OK\n")
	}
	for path, n := range counts {
		if *n != 1 {
			t.Errorf("POST %s: called %d times, want 1", path, *n)
		}
	}

	// A browser's cross-site POST is refused before it reaches the control.
	req := httptest.NewRequest("POST", "/quitquitquit", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || quits != 1 {
		t.Errorf("cross-site POST: status %d, quits %d; want 403 and 1", rec.Code, quits)
	}
}

func TestReadOnlyPathsRefuseOtherMethods(t *testing.T) {
	h := New(Sources{}, nil)
	for _, path := range []string{"/", "/help", "/ready", "/stats", "/stats/prometheus", "/clusters", "/listeners",
		"/config_dump", "/certs", "/server_info"} {
		rec := do(t, h, "POST", path)
		check(t, rec, 405, "admin: "+path+" is read-only; use GET\n")
		if got := rec.Header().Get("Allow"); got != "GET, HEAD" {
			t.Errorf("POST %s: Allow = %q, want \"GET, HEAD\"", path, got)
		}
	}
}

func TestUnavailable(t *testing.T) {
	h := New(Sources{}, nil)
	for _, path := range []string{"/ready", "/stats", "/stats/prometheus", "/clusters", "/listeners", "/config_dump",
		"/certs", "/server_info"} {
		check(t, do(t, h, "GET", path), 503, "admin: "+path+" is not available\n")
	}
	for _, path := range []string{"/drain", "/quitquitquit", "/healthcheck/fail", "/healthcheck/ok", "/logging"} {
		check(t, do(t, h, "POST", path), 503, "admin: "+path+" is not available\n")
	}
}

func TestPprof(t *testing.T) {
	h := New(Sources{}, nil)
	for target, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/goroutine?debug=1": "goroutine profile:",
		"/debug/pprof/cmdline":           "admin.test",
	} {
		rec := do(t, h, "GET", target)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("GET %s: status %d, body lacks %q:\n%.300s", target, rec.Code, want, rec.Body)
		}
	}
}

func TestListen(t *testing.T) {
	ln, err := Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	if !addr.IP.Equal(net.IPv4(127, 0, 0, 1)) || addr.Port == 0 {
		t.Fatalf("Listen(0) bound %v, want 127.0.0.1 and a free port", addr)
	}
	srv := &http.Server{Handler: New(Sources{Ready: func() (string, error) { return "LIVE", nil }}, nil), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	resp, err := http.Get("http://" + addr.String() + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "LIVE\n" {
		t.Errorf("GET /ready over TCP: %d %q, want 200 \"LIVE\\n\"", resp.StatusCode, body)
	}

	// The port is not reachable on the machine's other addresses.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ip, ok := a.(*net.IPNet)
		if !ok || ip.IP.IsLoopback() || ip.IP.To4() == nil {
			continue
		}
		target := net.JoinHostPort(ip.IP.String(), strconv.Itoa(addr.Port))
		if c, err := net.DialTimeout("tcp", target, time.Second); err == nil {
			c.Close()
			t.Errorf("admin port answered on %s, want loopback only", target)
		}
	}

	// A port in use is an error naming the address.
	if _, err := Listen(uint16(addr.Port)); err == nil || !strings.HasPrefix(err.Error(), "admin: listen 127.0.0.1:") {
		t.Errorf("second Listen on the same port: err = %v, want an \"admin: listen 127.0.0.1:…\" error", err)
	}
}
