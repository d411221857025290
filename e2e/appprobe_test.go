package e2e

import (
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// probeApps are applications in a pod that record whom they saw, by name.
type probeApps struct {
	mu    sync.Mutex
	peers map[string][]string
}

// saw records that app was reached from peer (a net.Conn's RemoteAddr).
func (p *probeApps) saw(app string, peer net.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.peers[app] = append(p.peers[app], peer.(*net.TCPAddr).AddrPort().Addr().Unmap().String())
}

// take returns and forgets whom app saw.
func (p *probeApps) take(app string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.peers[app]
	delete(p.peers, app)
	return out
}

// recorder is a listener that records the peer of each connection.
type recorder struct {
	net.Listener
	apps *probeApps
	name string
}

func (r recorder) Accept() (net.Conn, error) {
	c, err := r.Listener.Accept()
	if err == nil {
		r.apps.saw(r.name, c.RemoteAddr())
	}
	return c, err
}

// serve starts app name of kind ("http": 200 on /healthz, "tcp": accept
// and close, "grpc": health SERVING) on addr in pod.
func (p *probeApps) serve(t *testing.T, pod *testpod.Pod, kind, name, addr string) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("app %s on %s: %v", name, addr, err)
	}
	rec := recorder{Listener: l, apps: p, name: name}
	switch kind {
	case "http":
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
			}
		}), ReadHeaderTimeout: time.Minute}
		go func() { _ = srv.Serve(rec) }()
		t.Cleanup(func() { srv.Close() })
	case "grpc":
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go func() { _ = srv.Serve(rec) }()
		t.Cleanup(srv.Stop)
	default:
		meshtest.Serve(t, rec, func(net.Conn) {})
	}
}

// TestAppProbePodIP: the sidecar's application-probe runner sends a probe
// that names no host to the pod's IP (--pod-ip, which the injector fills
// with status.podIP), as kubelet would, from 127.0.0.6 (::6): asked by
// "kubelet" (pod k, outside the mesh) on a's :15021, an application
// listening only on a's pod IP is judged ready (200) and one listening
// only on localhost is not (503), for HTTP, TCP and gRPC probes, and the
// applications see the probes come from 127.0.0.6 (::6). a's sidecar runs
// mesh.mode STRICT, so a probe connection captured back into its inbound
// listener (from any other source) would be refused: a probe naming the
// pod IP as its host passes too, and the inbound side sees nothing.
// Without --pod-ip, probes go to 127.0.0.1 (outside Kubernetes) and the
// sidecar says so.
func TestAppProbePodIP(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv")
	node := testpod.NewNode(t)
	a, k := node.AddPod(t, "a"), node.AddPod(t, "k")
	apps := &probeApps{peers: map[string][]string{}}
	for _, fam := range []struct {
		name      string
		pod, loop netip.Addr
	}{{"v4", a.IPv4, netip.MustParseAddr("127.0.0.1")}, {"v6", a.IPv6, netip.IPv6Loopback()}} {
		for _, kind := range []string{"http", "tcp", "grpc"} {
			apps.serve(t, a, kind, fam.name+"-pod-"+kind, hostPort(fam.pod, 8080+probePort[kind]))
			apps.serve(t, a, kind, fam.name+"-local-"+kind, hostPort(fam.loop, 8090+probePort[kind]))
		}
	}
	iss := meshtest.StartIssuer(t, pillionBin, time.Hour, a)
	config := meshtest.WriteConfig(t, "mesh: {networks: "+meshtest.MeshNetworks+", mode: STRICT}\n")
	args := []string{"--config=" + config, iss.ProxyArg(a)}
	sc := meshtest.Inject(t, pillionBin, a, nil, args)
	kubelet := meshtest.NewHTTPClient(k, false)

	// check asks a's :15021 for each probe of probes (path → app name)
	// and wants code, and the app to have seen one connection from src
	// (none when src is "").
	check := func(t *testing.T, probes map[string]string, code int, src string) {
		t.Helper()
		for _, path := range slices.Sorted(maps.Keys(probes)) {
			app := probes[path]
			res, body := podHTTP(t, kubelet, "GET", "http://"+hostPort(a.IPv4, 15021)+path)
			if res.StatusCode != code {
				t.Errorf("%s (app %s): %s %q, want %d", path, app, res.Status, body, code)
			}
			// A TCP probe's connection may be answered before the app's
			// Accept returns: wait for it. A refused one never comes.
			want, got := []string{src}, apps.take(app)
			if src == "" {
				want = nil
			}
			for deadline := time.Now().Add(5 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				got = append(got, apps.take(app)...)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: app %s saw connections from %q, want %q", path, app, got, want)
			}
		}
	}

	for _, fam := range []struct {
		name      string
		pod, loop netip.Addr
		source    string
	}{{"v4", a.IPv4, netip.MustParseAddr("127.0.0.1"), "127.0.0.6"}, {"v6", a.IPv6, netip.IPv6Loopback(), "::6"}} {
		t.Run("pod IP "+fam.name, func(t *testing.T) {
			set := probeSet(fam.pod, fam.loop)
			sc.Proxy.Kill()
			sc.StartProxy(t, append(args, "--pod-ip="+fam.pod.String(), "--app-probes="+set.Encode())...)
			if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "serving application probes" }, 5*time.Second); !ok {
				t.Errorf("the sidecar did not log that it serves the probes at the pod IP:\n%s", sc.Proxy.Output())
			}
			check(t, map[string]string{
				"/app-health/http/readyz": fam.name + "-pod-http", "/app-health/tcp/readyz": fam.name + "-pod-tcp",
				"/app-health/grpc/readyz": fam.name + "-pod-grpc", "/app-health/podhost/readyz": fam.name + "-pod-http",
			}, http.StatusOK, fam.source)
			check(t, map[string]string{
				"/app-health/http/livez": fam.name + "-local-http", "/app-health/tcp/livez": fam.name + "-local-tcp",
				"/app-health/grpc/livez": fam.name + "-local-grpc",
			}, http.StatusServiceUnavailable, "")
			// A probe naming localhost as its host still goes there.
			check(t, map[string]string{"/app-health/localhost/readyz": fam.name + "-local-http"}, http.StatusOK, fam.loop.String())
			for _, l := range sc.Logs() {
				if (l.Msg == "connection" && l.Direction == "inbound") || strings.HasPrefix(l.Msg, "refusing") {
					t.Errorf("a probe was captured into the inbound side: %+v", l)
				}
			}
		})
	}

	t.Run("no pod IP", func(t *testing.T) {
		set := probeSet(a.IPv4, netip.MustParseAddr("127.0.0.1"))
		sc.Proxy.Kill()
		sc.StartProxy(t, append(args, "--pod-ip=", "--app-probes="+set.Encode())...)
		const msg = "serving application probes; those that name no host go to 127.0.0.1, not to the pod's IP as kubelet's would: no --pod-ip ($" +
			appprobe.PodIPEnvVar + ")"
		if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == msg }, 5*time.Second); !ok {
			t.Errorf("the sidecar did not say that probes go to 127.0.0.1:\n%s", sc.Proxy.Output())
		}
		check(t, map[string]string{"/app-health/http/readyz": "v4-pod-http", "/app-health/tcp/readyz": "v4-pod-tcp"},
			http.StatusServiceUnavailable, "")
		check(t, map[string]string{"/app-health/http/livez": "v4-local-http", "/app-health/tcp/livez": "v4-local-tcp"},
			http.StatusOK, "127.0.0.1")
		// The control: a probe naming the pod IP, from the pod IP (the
		// kernel's choice), is captured into the inbound side, which
		// refuses plaintext under STRICT.
		check(t, map[string]string{"/app-health/podhost/readyz": "v4-pod-http"}, http.StatusServiceUnavailable, "")
		if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool {
			return strings.HasPrefix(l.Msg, "refusing a connection that is not mTLS")
		}, 5*time.Second); !ok {
			t.Errorf("the inbound side did not refuse the captured probe:\n%s", sc.Proxy.Output())
		}
	})
}

// probePort is each kind's offset from the apps' base ports: 8080 and up
// on the pod IP only, 8090 and up on localhost only.
var probePort = map[string]uint16{"http": 0, "tcp": 1, "grpc": 2}

// probeSet is the probes TestAppProbePodIP asks for, of family fam: readyz
// probes name no host and find their apps on the pod IP, livez probes name
// no host and find theirs on localhost only; podhost names the pod IP as
// its host, localhost the loopback address.
func probeSet(pod, loop netip.Addr) appprobe.Set {
	http := func(port uint16, host string) appprobe.Probe {
		return appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: "/healthz", Port: int32(port), Host: host}, TimeoutSeconds: 5}
	}
	tcp := func(port uint16) appprobe.Probe {
		return appprobe.Probe{TCPSocket: &appprobe.TCPSocket{Port: int32(port)}, TimeoutSeconds: 5}
	}
	grpcProbe := func(port uint16) appprobe.Probe {
		return appprobe.Probe{GRPC: &appprobe.GRPC{Port: int32(port)}, TimeoutSeconds: 5}
	}
	return appprobe.Set{
		appprobe.Path("http", appprobe.Readiness):      http(8080, ""),
		appprobe.Path("http", appprobe.Liveness):       http(8090, ""),
		appprobe.Path("tcp", appprobe.Readiness):       tcp(8081),
		appprobe.Path("tcp", appprobe.Liveness):        tcp(8091),
		appprobe.Path("grpc", appprobe.Readiness):      grpcProbe(8082),
		appprobe.Path("grpc", appprobe.Liveness):       grpcProbe(8092),
		appprobe.Path("podhost", appprobe.Readiness):   http(8080, pod.String()),
		appprobe.Path("localhost", appprobe.Readiness): http(8090, loop.String()),
	}
}
