package main

import (
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
	"github.com/pillionmesh/pillion/proxy"
)

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []uint {
	t.Helper()
	var ports []uint
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, uint(l.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

// TestHealthPortServesAppProbes: the health port answers
// /app-health/<container>/readyz with the application's health, even
// while the sidecar itself is not ready.
func TestHealthPortServesAppProbes(t *testing.T) {
	var appCode atomic.Int64
	appCode.Store(http.StatusOK)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(appCode.Load()))
	}))
	defer app.Close()

	s, err := proxy.New(proxy.DefaultConfig(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	path := appprobe.Path("app", appprobe.Readiness)
	o := &ops{s: s, reg: prometheus.NewRegistry(), flags: flag.NewFlagSet("proxy", flag.ContinueOnError), appProbes: appprobe.Set{
		path: {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: int32(app.Listener.Addr().(*net.TCPAddr).Port)}},
	}}
	p := freePorts(t, 3)
	if err := o.start(&opsPorts{admin: p[0], health: p[1], prometheus: p[2]}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	defer o.stop()
	health := "http://127.0.0.1:" + strconv.Itoa(int(p[1]))
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(health + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get("/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz/ready = %d %q; the proxy was never run, it must not be ready", code, body)
	}
	if code, body := get(path); code != http.StatusOK || !strings.Contains(body, "/ready: 200 OK") {
		t.Errorf("%s with the application up = %d %q, want 200", path, code, body)
	}
	appCode.Store(http.StatusServiceUnavailable)
	if code, body := get(path); code != http.StatusServiceUnavailable || !strings.Contains(body, "/ready: 503 Service Unavailable") {
		t.Errorf("%s with the application failing = %d %q, want its 503", path, code, body)
	}
	if code, _ := get("/app-health/other/readyz"); code != http.StatusNotFound {
		t.Errorf("an unknown container's probe = %d, want 404", code)
	}
}

// TestProxyBadAppProbes: a bad --app-probes, or its default from the
// injector's environment variable, exits 2 naming the flag.
func TestProxyBadAppProbes(t *testing.T) {
	code, _, stderr := runCmd("proxy", "--app-probes", "{bad")
	if want := "pillion proxy: --app-probes: appprobe: invalid character 'b' looking for beginning of object key string\n"; code != 2 || !strings.HasPrefix(stderr, want) {
		t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, want)
	}
	t.Setenv(appprobe.EnvVar, `{"/app-health/app/readyz": {"httpGet": {"port": 0}}}`)
	code, _, stderr = runCmd("proxy")
	if want := `pillion proxy: --app-probes: appprobe: "/app-health/app/readyz": httpGet.port: 0: not a port (1-65535)` + "\n"; code != 2 || !strings.HasPrefix(stderr, want) {
		t.Errorf("from $%s: exit %d, stderr %q; want 2 and %q", appprobe.EnvVar, code, stderr, want)
	}
}

// TestProxyBadPodIP: a bad --pod-ip, or its default from the injector's
// environment variable, exits 2 naming the flag.
func TestProxyBadPodIP(t *testing.T) {
	for _, tt := range []struct{ value, want string }{
		{"pod", `"pod": not an IP address`},
		{"10.0.0.7:8080", `"10.0.0.7:8080": not an IP address`},
		{"fe80::7%eth0", `"fe80::7%eth0": has a zone; a pod's IP has none`},
		{"::ffff:10.0.0.7", `"::ffff:10.0.0.7": IPv4-mapped; give the IPv4 address`},
		{"127.0.0.1", `"127.0.0.1": not an address a pod has (loopback, unspecified or multicast)`},
		{"::", `"::": not an address a pod has (loopback, unspecified or multicast)`},
	} {
		wantUsageError(t, []string{"proxy", "--pod-ip", tt.value}, "pillion proxy: --pod-ip: "+tt.want)
	}
	t.Setenv(appprobe.PodIPEnvVar, "10.0.0.300")
	wantUsageError(t, []string{"proxy"}, `pillion proxy: --pod-ip: "10.0.0.300": not an IP address`)
}

// TestAppProbeOptions: a pod IP is probed from the inbound source of its
// family; without one, 127.0.0.1 from the kernel's choice.
func TestAppProbeOptions(t *testing.T) {
	for in, want := range map[string]prober.Options{
		"":            {},
		"10.0.0.7":    {PodIP: netip.MustParseAddr("10.0.0.7"), Source: netip.MustParseAddr("127.0.0.6")},
		"fd00:ca7::7": {PodIP: netip.MustParseAddr("fd00:ca7::7"), Source: netip.MustParseAddr("::6")},
	} {
		ip, err := parsePodIP(in)
		if err != nil {
			t.Fatalf("parsePodIP(%q): %v", in, err)
		}
		if got := appProbeOptions(ip); got != want {
			t.Errorf("--pod-ip=%q: %+v, want %+v", in, got, want)
		}
	}
}
