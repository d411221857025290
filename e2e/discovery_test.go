package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// nameService answers every UnaryCall with its pod's name in the header
// "x-pod".
type nameService struct {
	grpc_testing.UnimplementedTestServiceServer
	name string
}

func (s nameService) UnaryCall(ctx context.Context, _ *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-pod", s.name))
	return &grpc_testing.SimpleResponse{}, nil
}

func serveGRPCName(t *testing.T, pod *testpod.Pod, addr, name string) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	grpc_testing.RegisterTestServiceServer(srv, nameService{name: name})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
}

// within fails t unless every pod of names got share ± tol of total.
func within(t *testing.T, what string, got map[string]int, names []string, share, tol float64) {
	t.Helper()
	total := 0
	for _, v := range got {
		total += v
	}
	for _, n := range names {
		if s := float64(got[n]) / float64(total); math.Abs(s-share) > tol {
			t.Errorf("%s: %s got %.1f%% of %d requests, want %.0f%% ± %.0f%%: %v", what, n, 100*s, total, 100*share, 100*tol, got)
		}
	}
}

// TestDiscoveryBalancesServiceRequests: three backends behind one Service;
// requests over one client keep-alive connection (HTTP/1.1, and gRPC over
// one HTTP/2 connection) spread evenly — the sidecar balances each request
// across the endpoints discovery announced, where kube-proxy would pin the
// connection to one; a slow backend and a failing one draw little.
func TestDiscoveryBalancesServiceRequests(t *testing.T) {
	webs := []string{"web-0", "web-1", "web-2"}
	m := newClusterMesh(t, webs, nil, "")
	c := m.httpClient()

	got := m.spread(c, 3000, 0)
	within(t, "HTTP/1.1 over one connection", got, webs, 1.0/3, 0.05)
	t.Logf("HTTP/1.1, 3000 requests over one connection: %v", got)
	if n := failures(got); n != 0 {
		t.Fatalf("%d requests failed: %v\n%s", n, got, warnings(m.client))
	}

	conn, err := grpc.NewClient("passthrough:///"+hostPort(m.webIP, 9090),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return m.client.Pod.Dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := grpc_testing.NewTestServiceClient(conn)
	byPod := map[string]int{}
	for range 3000 {
		var md metadata.MD
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := tc.UnaryCall(ctx, &grpc_testing.SimpleRequest{}, grpc.Header(&md))
		cancel()
		if err != nil {
			t.Fatalf("gRPC: %v", err)
		}
		byPod[strings.Join(md.Get("x-pod"), ",")]++
	}
	within(t, "gRPC over one connection", byPod, webs, 1.0/3, 0.05)
	t.Logf("gRPC, 3000 calls over one connection: %v", byPod)

	// One backend 50 ms slower: peak-EWMA sees it, P2C avoids it.
	m.webs["web-1"].delay.Store(50)
	got = m.spread(c, 1000, 0)
	if s := float64(got["web-1"]) / 1000; s >= 0.15 {
		t.Errorf("web-1 50 ms slower got %.1f%% of the next 1000 requests, want < 15%%: %v", 100*s, got)
	}
	t.Logf("web-1 50 ms slower: %v", got)
	m.webs["web-1"].delay.Store(0)

	// One backend answering 503 to everything, at once: it gets (almost)
	// nothing, though it answers fast — a failure counts as a second's
	// latency, so one request at a time avoids it after its first failure,
	// before five in a row would eject it (ejection: the balancer's tests).
	m.webs["web-2"].status.Store(http.StatusServiceUnavailable)
	before := m.webs["web-2"].served.Load()
	got = m.spread(c, 1000, 0)
	if n := m.webs["web-2"].served.Load() - before; float64(n)/1000 >= 0.05 {
		t.Errorf("web-2 answering 503 got %d of the next 1000 requests, want < 5%%: %v", n, got)
	}
	t.Logf("503 backend: %v", got)

	// /clusters shows the Service, its three endpoints and their state.
	admin := meshtest.NewHTTPClient(m.client.Pod, false)
	text := want200(t, admin, "GET", adminURL+"/clusters")
	cluster := "outbound|80||web.default::"
	for _, name := range webs {
		ep := cluster + hostPort(m.webs[name].pod.IPv4, 8080)
		for _, line := range []string{ep + "::identity::" + meshtest.PodID(m.webs[name].pod), ep + "::weight::1", ep + "::workload::web.default"} {
			if !strings.Contains(text, line+"\n") {
				t.Errorf("/clusters lacks %q:\n%s", line, text)
			}
		}
	}
	web2 := cluster + hostPort(m.webs["web-2"].pod.IPv4, 8080)
	if n := statValue(t, text, web2+"::rq_error"); n < 1 {
		t.Errorf("/clusters shows %v errors of web-2, want at least 1:\n%s", n, text)
	}
	if ms := statValue(t, text, web2+"::ewma_ms"); ms < 500 {
		t.Errorf("/clusters shows web-2's estimate at %v ms, want the failure penalty (1 s, decayed a little):\n%s", ms, text)
	}
}

// TestDiscoveryBalancesConnections: opaque TCP to a Service port
// (appProtocol tcp: never sniffed, even for a server that speaks first) is
// balanced per connection across its endpoints, in mTLS to each.
func TestDiscoveryBalancesConnections(t *testing.T) {
	webs := []string{"web-0", "web-1", "web-2"}
	m := newClusterMesh(t, webs, nil, "")
	got := map[string]int{}
	for range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := m.client.Pod.Dial(ctx, "tcp", hostPort(m.webIP, 7000))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		cancel()
		if err != nil {
			t.Fatalf("reading the server's name: %v", err)
		}
		got[string(b)]++
	}
	within(t, "300 connections to an opaque Service port", got, webs, 1.0/3, 0.08)
	t.Logf("300 TCP connections: %v", got)
	admin := meshtest.NewHTTPClient(m.client.Pod, false)
	text := want200(t, admin, "GET", adminURL+"/stats?filter=mtls_connections|sniff_timeouts")
	st := statLines(t, text)
	if n, err := strconv.Atoi(st[`pillion_mtls_connections_total{direction="outbound"}`]); err != nil || n < 300 {
		t.Errorf("%v outbound mTLS connections counted (%v), want the 300 at least:\n%s", n, err, text)
	}
	if n := st[`pillion_sniff_timeouts_total{direction="outbound"}`]; n != "0" {
		t.Errorf("%s outbound sniffs timed out, want none: the Service port's appProtocol says opaque TCP:\n%s", n, text)
	}
}

// statValue returns the number on the line "name::<number>" of /clusters.
func statValue(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+"::"); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in:\n%s", name, text)
	return 0
}

// TestDiscoveryFollowsPods: at 200 req/s, a backend's pod deleted (its app
// gone with it) costs no request with the retry filter on and at most 1 %
// without, none after 2 s; a new pod made Ready takes requests within 2 s.
func TestDiscoveryFollowsPods(t *testing.T) {
	webs := []string{"web-0", "web-1", "web-2", "web-3"}
	const retry = "outbound: {filters: [{retry: {attempts: 3, on: [connect-failure, reset, \"503\"]}}]}\n"
	m := newClusterMesh(t, webs, nil, retry, "web-new")
	c := m.httpClient()
	ctx := context.Background()

	for _, tc := range []struct {
		name, pod, config string
		maxFailed         int
	}{
		{"with retry", "web-0", retry, 0},
		{"without retry", "web-1", "", 4}, // 1 % of 400
	} {
		meshtest.UpdateConfig(t, m.clientCfg, tc.config)
		time.Sleep(1500 * time.Millisecond) // applied once two reads a second apart agree
		var got, after map[string]int
		var wg sync.WaitGroup
		wg.Go(func() { got = m.spread(c, 400, 5*time.Millisecond) }) // 2 s at 200 req/s
		time.Sleep(500 * time.Millisecond)
		deleted := time.Now()
		m.webs[tc.pod].app.Close() // the pod goes, its app with it
		if err := m.env.DeletePod(ctx, clusterNS, tc.pod, 0); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if n := failures(got); n > tc.maxFailed {
			t.Errorf("%s: %d of 400 requests failed while %s was deleted, want at most %d: %v", tc.name, n, tc.pod, tc.maxFailed, got)
		}
		time.Sleep(time.Until(deleted.Add(2 * time.Second)))
		after = m.spread(c, 200, 5*time.Millisecond)
		if n := failures(after); n > 0 || after[tc.pod] > 0 {
			t.Errorf("%s: 2 s after %s was deleted: %v, want no failure and nothing to it", tc.name, tc.pod, after)
		}
	}

	// A new pod made Ready takes requests within 2 s, at 200 req/s.
	var got map[string]int
	var wg sync.WaitGroup
	wg.Go(func() { got = m.spread(c, 600, 5*time.Millisecond) })
	time.Sleep(500 * time.Millisecond)
	m.startWeb(t, "web-new") // returns once its Pod is reported Ready
	ready := time.Now()
	for m.webs["web-new"].served.Load() == 0 && time.Since(ready) < 2*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(ready)
	wg.Wait()
	if m.webs["web-new"].served.Load() == 0 {
		t.Errorf("a new pod made Ready got no request in 2 s: %v", got)
	}
	t.Logf("new pod: first request %v after Ready; spread %v", took.Round(time.Millisecond), got)
}

// TestDiscoveryVerifiesEndpointIdentity: an endpoint whose sidecar presents
// another workload's SVID is refused before anything is sent, counted and
// logged; the Service's requests go to the others.
func TestDiscoveryVerifiesEndpointIdentity(t *testing.T) {
	webs := []string{"web-0", "web-1", "imposter"}
	m := newClusterMesh(t, webs, map[string]string{"imposter": meshtest.WorkloadID(clusterNS, "web-0")},
		"outbound: {filters: [{retry: {attempts: 3, on: [connect-failure]}}]}\n")
	got := m.spread(m.httpClient(), 300, 0)
	if n := failures(got); n != 0 {
		t.Errorf("%d requests failed: %v", n, got)
	}
	if n := m.webs["imposter"].served.Load(); n != 0 || got["imposter"] != 0 {
		t.Fatalf("the imposter's app got %d requests, want none", n)
	}
	if l, ok := m.client.WaitLog(func(l meshtest.LogLine) bool {
		return strings.HasPrefix(l.Msg, "refusing an endpoint that presented another identity")
	}, 5*time.Second); !ok {
		t.Errorf("no refusal logged:\n%s", m.client.Proxy.Output())
	} else if !strings.Contains(l.Error, meshtest.WorkloadID(clusterNS, "web-0")) {
		t.Errorf("refusal %+v does not name the identity presented", l)
	}
	admin := meshtest.NewHTTPClient(m.client.Pod, false)
	text := want200(t, admin, "GET", adminURL+"/stats?filter=tls_handshake_failures")
	if !strings.Contains(text, `reason="wrong_identity"`) || strings.Contains(text, `reason="wrong_identity"} 0`) {
		t.Errorf("no wrong_identity handshake failure counted:\n%s", text)
	}
}

// TestDiscoveryAway: discovery killed under load costs no request to a
// known Service for 30 s; restarted, the sidecar resubscribes and takes a
// change made while it was away. The sidecar holds only the Services its
// application used, whatever the cluster holds.
func TestDiscoveryAway(t *testing.T) {
	webs := []string{"web-0", "web-1", "web-2"}
	m := newClusterMesh(t, webs, nil, "")
	c := m.httpClient()
	ctx := context.Background()
	if got := m.spread(c, 30, 0); failures(got) != 0 {
		t.Fatalf("before: %v", got)
	}

	m.discovery.proc.Kill()
	<-m.discovery.proc.Done()
	got := m.spread(c, 6000, 5*time.Millisecond) // 30 s at 200 req/s
	if n := failures(got); n != 0 {
		t.Errorf("%d of 6000 requests failed while discovery was away: %v", n, got)
	}

	admin := meshtest.NewHTTPClient(m.client.Pod, false)
	stats := func() string { return want200(t, admin, "GET", adminURL+"/stats?filter=pillion_discovery_client") }
	if text := stats(); statLines(t, text)["pillion_discovery_client_connected"] != "0" ||
		statLines(t, text)["pillion_discovery_client_disconnects_total"] != "1" {
		t.Errorf("while discovery is away, the sidecar's metrics do not say so:\n%s", text)
	}

	// A change while discovery is away: web-2 leaves the Service.
	m.webs["web-2"].served.Store(0)
	if err := m.env.DeletePod(ctx, clusterNS, "web-2", 0); err != nil {
		t.Fatal(err)
	}
	m.waitReady(t, "web-0", "web-1")
	m.discovery.start(t)
	restarted := time.Now()
	deadline := restarted.Add(10 * time.Second)
	for {
		m.webs["web-2"].served.Store(0)
		got := m.spread(c, 100, 0)
		if got["web-2"] == 0 && m.webs["web-2"].served.Load() == 0 && failures(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after discovery came back, web-2 (deleted while it was away) still gets requests: %v", got)
		}
	}
	t.Logf("web-2, deleted while discovery was away, got its last request within %v of discovery's restart", time.Since(restarted).Round(100*time.Millisecond))
	if text := stats(); statLines(t, text)["pillion_discovery_client_connected"] != "1" ||
		statLines(t, text)["pillion_discovery_client_connects_total"] != "2" {
		t.Errorf("discovery back: the sidecar's metrics do not say so:\n%s", text)
	}

	// 200 Services in the cluster; the application uses 3: the sidecar
	// holds 3.
	for i := range 200 {
		_, err := m.env.Client.CoreV1().Services(clusterNS).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("other-%d", i)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	used := []string{"web", "other-7", "other-42"}
	for _, name := range used[1:] {
		svc, err := m.env.Client.CoreV1().Services(clusterNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			res, err := c.Get("http://" + svc.Spec.ClusterIP + ":80/")
			last := fmt.Sprint(err)
			if err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode == 200 && strings.HasPrefix(string(b), "web-") {
					break
				}
				last = fmt.Sprintf("%s %s: %q", res.Status, res.Header.Get("x-pillion-flags"), b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("Service %s (%s) never answered through the mesh: %s", name, svc.Spec.ClusterIP, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	text := want200(t, admin, "GET", adminURL+"/clusters")
	var clusters []string
	for _, line := range strings.Split(text, "\n") {
		if name, ok := strings.CutSuffix(line, "::observability_name::"+strings.Split(line, "::")[0]); ok && strings.HasPrefix(name, "outbound|") {
			clusters = append(clusters, name)
		}
	}
	if len(clusters) != 3 {
		t.Errorf("/clusters holds %d discovered clusters, want 3 (web, other-7, other-42): %v", len(clusters), clusters)
	}
}

// warnings are sc's proxy log lines above info.
func warnings(sc *meshtest.Sidecar) string {
	var out []string
	for _, l := range strings.Split(sc.Proxy.Output(), "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
