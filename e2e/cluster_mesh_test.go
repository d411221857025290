package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// clusterMesh is a little mesh on a real cluster: a kube-apiserver, etcd
// and kube-controller-manager (real EndpointSlices from real Pods and
// Services), `pillion discovery` watching them, and test pods — a client
// and web-0, web-1, … — with real sidecars. The test plays the kubelet: it
// reports each Pod running at its test pod's address. The Service "web"
// (port 80 → 8080) selects the web pods; discovery is reached by the
// sidecars at the node's bridge address through a forwarder, as a Service
// would reach it.
type clusterMesh struct {
	env       *kubetest.Env
	node      *testpod.Node
	issuer    *meshtest.Issuer
	client    *meshtest.Sidecar
	clientCfg string // the client sidecar's config file
	webs      map[string]*webPod
	webIP     netip.Addr // the Service's ClusterIP
	discovery *discoveryProc
}

// webPod is one backend: its test pod, sidecar, and how its app behaves.
type webPod struct {
	pod     *testpod.Pod
	sidecar *meshtest.Sidecar
	served  atomic.Int64 // requests the app answered
	delay   atomic.Int64 // ms the app waits before answering
	status  atomic.Int64 // the status it answers, 0: 200
	app     *http.Server
}

const (
	discoveryPort = 15012
	clusterNS     = "default"
	nodeName      = "node-1"
)

// newClusterMesh starts the cluster, discovery and the pods named in webs
// (each an app on :8080 with a sidecar; ids gives some of them another
// workload's SVID than their service account's), and the client with a
// sidecar pointed at discovery, running clientConfig. The pods named in
// spare get a test pod and an identity, and are started by startWeb.
func newClusterMesh(t *testing.T, webs []string, ids map[string]string, clientConfig string, spare ...string) *clusterMesh {
	t.Helper()
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv")
	m := &clusterMesh{env: kubetest.StartCluster(t), node: testpod.NewNode(t), webs: map[string]*webPod{}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := m.env.CreateNode(ctx, nodeName); err != nil {
		t.Fatal(err)
	}
	clientPod := m.node.AddPod(t, "client")
	pods := []*testpod.Pod{clientPod}
	for _, name := range append(webs, spare...) {
		w := &webPod{pod: m.node.AddPod(t, name)}
		m.webs[name] = w
		pods = append(pods, w.pod)
	}
	m.issuer = meshtest.StartIssuerWith(t, pillionBin, time.Hour, meshtest.IssuerOptions{
		IDs:     ids,
		Sockets: map[string]string{"discovery.sock": meshtest.WorkloadID("pillion-system", "pillion-discovery")},
	}, pods...)
	m.discovery = startDiscovery(t, m.env.Kubeconfig(t), m.issuer.SocketPath("discovery.sock"))
	l, err := m.node.Listen("tcp", hostPort(m.node.BridgeV4(), discoveryPort))
	if err != nil {
		t.Fatal(err)
	}
	testpod.Forward(t, l, m.discovery.addr)

	svc, err := m.env.Client.CoreV1().Services(clusterNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090)},
				// Opaque TCP, by its appProtocol: never sniffed, balanced
				// per connection.
				{Name: "tcp", Port: 7000, TargetPort: intstr.FromInt32(7000), AppProtocol: new("tcp")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.webIP = netip.MustParseAddr(svc.Spec.ClusterIP)
	for _, name := range webs {
		m.startWeb(t, name)
	}
	m.clientCfg = meshtest.WriteConfig(t, clientConfig)
	m.client = meshtest.Inject(t, pillionBin, clientPod, nil, []string{
		m.issuer.ProxyArg(clientPod), "--config=" + m.clientCfg,
		"--discovery-address=" + hostPort(m.node.BridgeV4(), discoveryPort),
		// A first lookup that outwaits the default 1 s (a loaded machine
		// under -race) would go to the ClusterIP, which no kube-proxy
		// serves here.
		"--discovery-initial-fetch-timeout=20s",
		"--workload-name=client", "--workload-namespace=" + clusterNS, "--workload-app=client",
	})
	m.waitReady(t, webs...)
	return m
}

// startWeb starts web pod name's app and sidecar and reports its Pod
// running and Ready.
func (m *clusterMesh) startWeb(t *testing.T, name string) {
	t.Helper()
	w := m.webs[name]
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if d := w.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d) * time.Millisecond)
		}
		w.served.Add(1)
		if s := w.status.Load(); s != 0 {
			rw.WriteHeader(int(s))
		}
		_, _ = io.WriteString(rw, name)
	})
	l, err := w.pod.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	w.app = &http.Server{Handler: mux, Protocols: &p, ReadHeaderTimeout: time.Minute}
	go func() { _ = w.app.Serve(l) }()
	t.Cleanup(func() { w.app.Close() })
	serveGRPCName(t, w.pod, ":9090", name)
	// A server-first TCP service: it writes its pod's name and closes.
	tl, err := w.pod.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, tl, func(c net.Conn) { _, _ = io.WriteString(c, name); c.Close() })
	// The flags the injector's environment gives a pod of Deployment web.
	w.sidecar = meshtest.Inject(t, pillionBin, w.pod, nil, []string{m.issuer.ProxyArg(w.pod),
		"--workload-name=web", "--workload-namespace=" + clusterNS, "--workload-app=web"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = m.env.RunPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: clusterNS, Labels: map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b4"},
			// A pod of Deployment web (no controller runs here to mind
			// the owner): discovery names its workload "web", as the
			// sidecar's flags do.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f7c9b4",
				UID: "e2e-web-5d8f7c9b4", Controller: new(true)}},
			// The injector's marker: a pillion sidecar runs here.
			Annotations: map[string]string{"pillion.io/status": `{"version":"e2e"}`},
		},
		Spec: corev1.PodSpec{
			NodeName:           nodeName,
			ServiceAccountName: name, // discovery announces spiffe://cluster.local/ns/default/sa/<name> = meshtest.PodID
			Containers: []corev1.Container{{Name: "web", Image: "pillion.invalid/web",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "grpc", ContainerPort: 9090}, {Name: "tcp", ContainerPort: 7000}}}},
		},
	}, w.pod.IPv4)
	if err != nil {
		t.Fatal(err)
	}
}

// waitReady waits until the Service's EndpointSlices list exactly the
// ready web pods named.
func (m *clusterMesh) waitReady(t *testing.T, names ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[m.webs[n].pod.IPv4.String()] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := m.env.WaitEndpoints(ctx, clusterNS, "web", func(s []discoveryv1.EndpointSlice) bool {
		ready := map[string]bool{}
		for _, e := range kubetest.Endpoints(s) {
			if e.Ready {
				ready[e.Addr] = true
			}
		}
		if len(ready) != len(want) {
			return false
		}
		for a := range want {
			if !ready[a] {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("waiting for endpoints %v: %v", names, err)
	}
}

// httpClient is one keep-alive connection from the client pod (MaxConns 1).
func (m *clusterMesh) httpClient() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Protocols: &p, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return m.client.Pod.Dial(ctx, network, addr)
		},
	}}
}

// get sends one request to the Service and returns the status and which
// pod answered ("" when none did).
func (m *clusterMesh) get(c *http.Client) (int, string, error) {
	res, err := c.Get("http://" + hostPort(m.webIP, 80) + "/")
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if f := res.Header.Get("pillion-response-flags"); f != "" {
		return res.StatusCode, "", fmt.Errorf("%d %s: %s", res.StatusCode, f, res.Header.Get("pillion-proxy-error"))
	}
	return res.StatusCode, string(b), err
}

// spread sends n requests on c and counts the answers by pod; failures are
// counted under "failed: <status or error>".
func (m *clusterMesh) spread(c *http.Client, n int, every time.Duration) map[string]int {
	got := map[string]int{}
	next := time.Now()
	for range n {
		code, pod, err := m.get(c)
		switch {
		case err != nil:
			got["failed: "+err.Error()]++
		case code != http.StatusOK:
			got["failed: "+strconv.Itoa(code)]++
		default:
			got[pod]++
		}
		if every > 0 {
			next = next.Add(every)
			time.Sleep(time.Until(next))
		}
	}
	return got
}

func failures(got map[string]int) int {
	n := 0
	for k, v := range got {
		if strings.HasPrefix(k, "failed: ") {
			n += v
		}
	}
	return n
}

// discoveryProc is `pillion discovery` running in the test's own network
// namespace (where the API server is), on a port of its own.
type discoveryProc struct {
	proc                 *testpod.Process
	addr                 string // 127.0.0.1:port of its gRPC server
	kubeconfig, socket   string
	grpcPort, healthPort int
}

// log is what discovery wrote so far.
func (d *discoveryProc) log() string { return d.proc.Output() }

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func startDiscovery(t testing.TB, kubeconfig, socket string) *discoveryProc {
	t.Helper()
	d := &discoveryProc{kubeconfig: kubeconfig, socket: socket, grpcPort: freePort(t), healthPort: freePort(t)}
	d.addr = fmt.Sprintf("127.0.0.1:%d", d.grpcPort)
	d.start(t)
	return d
}

// start starts discovery (again, on the same ports) and waits until it is
// ready: its informers synced and its identity up.
func (d *discoveryProc) start(t testing.TB) {
	t.Helper()
	d.proc = testpod.StartOnNode(t, controlBin, "discovery", "--kubeconfig="+d.kubeconfig,
		"--spiffe-socket="+d.socket, fmt.Sprintf("--port=%d", d.grpcPort), fmt.Sprintf("--metrics-port=%d", d.healthPort))
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", d.healthPort))
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-d.proc.Done():
			t.Fatalf("pillion discovery exited: %v\n%s", d.proc.Wait(), d.proc.Output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pillion discovery not ready in 30s:\n%s", d.proc.Output())
		}
	}
}
