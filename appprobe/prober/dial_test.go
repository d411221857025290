package prober_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
	"github.com/pillionmesh/pillion/internal/privileged"
)

// In these tests 127.0.0.2 stands for the pod's IP and 127.0.0.6 for the
// inbound source: on Linux all of 127.0.0.0/8 is local, so no privilege
// or network namespace is needed (the e2e tests use real pod IPs).
var (
	podIP  = netip.MustParseAddr("127.0.0.2")
	source = netip.MustParseAddr("127.0.0.6")
	inPod  = prober.Options{PodIP: podIP, Source: source}
)

// app is an application listening on one address that records whom it
// saw, for every kind of probe: HTTP (200 on any path), gRPC health
// (SERVING) and bare TCP, all on one port.
type app struct {
	net.Listener
	mu    sync.Mutex
	peers []string // the source address of each connection
	hosts []string // the Host of each HTTP request
}

// listen starts an app on ip; kind chooses what it serves: "http",
// "grpc" or "tcp" (accept and close).
func listen(t *testing.T, ip, kind string) *app {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		msg := "listening on " + ip + " (all of 127.0.0.0/8 is local on Linux only): " + err.Error()
		if privileged.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	a := &app{Listener: l}
	t.Cleanup(func() { l.Close() })
	switch kind {
	case "http":
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.mu.Lock()
			a.hosts = append(a.hosts, r.Host)
			a.mu.Unlock()
		})}
		go func() { _ = srv.Serve(a) }()
		t.Cleanup(func() { srv.Close() })
	case "grpc":
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go func() { _ = srv.Serve(a) }()
		t.Cleanup(srv.Stop)
	default:
		go func() {
			for {
				c, err := a.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	return a
}

// Accept records the peer of each connection.
func (a *app) Accept() (net.Conn, error) {
	c, err := a.Listener.Accept()
	if err == nil {
		a.mu.Lock()
		a.peers = append(a.peers, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String())
		a.mu.Unlock()
	}
	return c, err
}

// seenOne returns the peers and HTTP hosts once the app has seen a
// connection, or after a second: a TCP probe's connect completes in the
// kernel, before the app's Accept returns.
func (a *app) seenOne() (peers, hosts []string) {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		if peers, hosts = a.seen(); len(peers) > 0 || time.Now().After(deadline) {
			return peers, hosts
		}
	}
}

// seen returns the peers and HTTP hosts the app has seen so far.
func (a *app) seen() (peers, hosts []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.peers...), append([]string(nil), a.hosts...)
}

// probe is a probe of kind on port, to host ("" names none).
func probe(kind string, port int32, host string) appprobe.Probe {
	switch kind {
	case "http":
		return appprobe.Probe{HTTPGet: &appprobe.HTTPGet{Path: "/healthz", Port: port, Host: host}}
	case "grpc":
		return appprobe.Probe{GRPC: &appprobe.GRPC{Port: port}} // no host in a grpc probe
	}
	return appprobe.Probe{TCPSocket: &appprobe.TCPSocket{Port: port, Host: host}}
}

// run runs one probe through a Handler with o.
func run(p appprobe.Probe, o prober.Options) (int, string) {
	path := appprobe.Path("app", appprobe.Readiness)
	rec := httptest.NewRecorder()
	prober.NewHandler(appprobe.Set{path: p}, o).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// TestPodIP: with a pod IP, a probe that names no host goes to the pod
// IP, as kubelet's, from the source given: an application bound to its pod
// IP only is judged up, one bound to localhost only is judged down.
// Without a pod IP, probes go to 127.0.0.1 as before.
func TestPodIP(t *testing.T) {
	for _, kind := range []string{"http", "tcp", "grpc"} {
		t.Run(kind, func(t *testing.T) {
			podOnly := listen(t, podIP.String(), kind)
			code, body := run(probe(kind, port(t, podOnly), ""), inPod)
			if code != http.StatusOK {
				t.Errorf("app on the pod IP only: %d %q, want 200", code, body)
			}
			peers, hosts := podOnly.seenOne()
			if len(peers) != 1 || peers[0] != source.String() {
				t.Errorf("app on the pod IP only saw connections from %q, want one from %s", peers, source)
			}
			addr := net.JoinHostPort(podIP.String(), strconv.Itoa(int(port(t, podOnly))))
			if kind == "http" && (len(hosts) != 1 || hosts[0] != addr) {
				t.Errorf("app on the pod IP only saw Host %q, want %q as kubelet sends", hosts, addr)
			}

			localOnly := listen(t, "127.0.0.1", kind)
			code, body = run(probe(kind, port(t, localOnly), ""), inPod)
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
				t.Errorf("app on 127.0.0.1 only, with a pod IP: %d %q, want 503, refused", code, body)
			}
			if peers, _ := localOnly.seen(); len(peers) != 0 {
				t.Errorf("app on 127.0.0.1 only was reached from %q", peers)
			}

			// Without a pod IP (outside Kubernetes): 127.0.0.1.
			if code, body := run(probe(kind, port(t, localOnly), ""), prober.Options{}); code != http.StatusOK {
				t.Errorf("app on 127.0.0.1 only, without a pod IP: %d %q, want 200", code, body)
			}
			if code, body := run(probe(kind, port(t, podOnly), ""), prober.Options{}); code != http.StatusServiceUnavailable {
				t.Errorf("app on the pod IP only, without a pod IP: %d %q, want 503", code, body)
			}
		})
	}
}

// TestHostNamed: a probe that names a host connects to that host, from the
// kernel's choice of source; naming the pod IP itself, from the inbound
// source, since any other would be captured.
func TestHostNamed(t *testing.T) {
	for _, kind := range []string{"http", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			other := listen(t, "127.0.0.3", kind)
			if code, body := run(probe(kind, port(t, other), "127.0.0.3"), inPod); code != http.StatusOK {
				t.Errorf("host 127.0.0.3: %d %q, want 200", code, body)
			}
			if peers, _ := other.seenOne(); len(peers) != 1 || peers[0] == source.String() {
				t.Errorf("host 127.0.0.3 saw connections from %q, want one from the kernel's choice, not %s", peers, source)
			}

			pod := listen(t, podIP.String(), kind)
			if code, body := run(probe(kind, port(t, pod), podIP.String()), inPod); code != http.StatusOK {
				t.Errorf("host %s, the pod IP: %d %q, want 200", podIP, code, body)
			}
			if peers, _ := pod.seenOne(); len(peers) != 1 || peers[0] != source.String() {
				t.Errorf("host %s, the pod IP, saw connections from %q, want one from %s", podIP, peers, source)
			}
		})
	}
}

// TestSourceNotLocal: a source that is not an address of the pod (::6
// where pillion init did not add it) fails the probe saying so.
func TestSourceNotLocal(t *testing.T) {
	a := listen(t, podIP.String(), "tcp")
	o := prober.Options{PodIP: podIP, Source: netip.MustParseAddr("192.0.2.6")}
	code, body := run(probe("tcp", port(t, a), ""), o)
	want := "from 192.0.2.6, which is not an address of this pod (pillion init adds ::6 to lo where IPv6 is enabled): "
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("got %d %q, want 503 and %q", code, body, want)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    prober.Options
		want string
	}{
		{"zero", prober.Options{}, ""},
		{"pod IP only", prober.Options{PodIP: netip.MustParseAddr("10.0.0.7")}, ""},
		{"IPv4", prober.Options{PodIP: netip.MustParseAddr("10.0.0.7"), Source: source}, ""},
		{"IPv6", prober.Options{PodIP: netip.MustParseAddr("fd00::7"), Source: netip.MustParseAddr("::6")}, ""},
		{"families", prober.Options{PodIP: netip.MustParseAddr("fd00::7"), Source: source},
			"prober: source: 127.0.0.6 is not of the family of the pod IP fd00::7"},
		{"source alone", prober.Options{Source: source},
			"prober: source: 127.0.0.6 without a pod IP: it is only for connections to the pod IP"},
		{"zone", prober.Options{PodIP: netip.MustParseAddr("fe80::1%eth0")}, "prober: pod IP: fe80::1%eth0: has a zone"},
		{"unspecified", prober.Options{PodIP: netip.MustParseAddr("0.0.0.0")}, "prober: pod IP: 0.0.0.0: unspecified"},
		{"mapped", prober.Options{PodIP: netip.MustParseAddr("::ffff:10.0.0.7")},
			"prober: pod IP: ::ffff:10.0.0.7: IPv4-mapped; give the IPv4 address"},
		{"mapped source", prober.Options{PodIP: netip.MustParseAddr("fd00::7"), Source: netip.MustParseAddr("::ffff:127.0.0.6")},
			"prober: source: ::ffff:127.0.0.6: IPv4-mapped; give the IPv4 address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if err := tt.o.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
	// A Handler with invalid Options runs no probe.
	code, body := run(probe("tcp", 1, ""), prober.Options{Source: source})
	if want := "prober: invalid probe: options: source: 127.0.0.6 without a pod IP: it is only for connections to the pod IP\n"; code != 500 || body != want {
		t.Errorf("invalid Options: %d %q, want 500 %q", code, body, want)
	}
}
