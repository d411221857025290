package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// Part 2's fixed names and numbers.
const (
	namespace = metav1.NamespaceDefault
	nodeName  = "node-1"
	// discoveryAddr is where the pods reach `pillion discovery`: the node's
	// bridge address, forwarded to discovery on the host's loopback.
	discoveryAddr = "198.18.0.1:15012"
	// requests is how many requests each round sends.
	requests = 30
	// webCluster starts the frontend sidecar's /clusters lines for the
	// Service, named as Envoy names it.
	webCluster = "outbound|80||web.default"
)

// clientConfig is the frontend sidecar's config: the mesh as in part 1,
// and a retry filter outbound, so that a request whose endpoint could not
// be reached is sent again (to an endpoint the balancer picks again).
const clientConfig = `mesh:
  networks: ` + meshtest.MeshNetworks + `
  mode: STRICT
outbound:
  filters:
    - retry: { attempts: 3, on: [connect-failure, "503"] }
`

// serverConfig is the web pods' sidecars' config.
const serverConfig = `mesh:
  networks: ` + meshtest.MeshNetworks + `
  mode: STRICT
`

// svc is part 2's state.
type svc struct {
	*demo
	ctx       context.Context
	tb        sessionTB // for kubetest
	env       *kubetest.Env
	clusterIP netip.Addr
	hits      map[string]*atomic.Int64 // requests each web app answered, by pod name
	sidecars  map[string]*meshtest.Sidecar
	http      *meshtest.HTTPClient // the frontend application's client, kept across rounds
	metrics   string               // discovery's /metrics URL
}

// service is part 2: a Service, discovery, and the frontend's sidecar
// balancing, verifying and following the Service's endpoints.
func (d *demo) service() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v := &svc{demo: d, ctx: ctx, tb: newSessionTB(d.s), hits: map[string]*atomic.Int64{}, sidecars: map[string]*meshtest.Sidecar{}}
	if err := v.startCluster(); err != nil {
		return err
	}
	if err := v.startWeb(); err != nil {
		return err
	}
	if err := v.startDiscovery(); err != nil {
		return err
	}
	if err := v.startFrontend(); err != nil {
		return err
	}
	if err := v.balance(); err != nil {
		return err
	}
	if err := v.impostor(); err != nil {
		return err
	}
	if err := v.deletion(); err != nil {
		return err
	}
	return v.showClusters()
}

func (v *svc) startCluster() error {
	step("Part 2, a Service. Starting a small real cluster")
	fmt.Println("  etcd, kube-apiserver, and kube-controller-manager with its EndpointSlice controllers;")
	fmt.Println("  the demo plays the kubelet (no containers: the pods are the namespaces above)")
	start := time.Now()
	v.env = kubetest.StartCluster(v.tb)
	if _, err := v.env.CreateNode(v.ctx, nodeName); err != nil {
		return err
	}
	fmt.Printf("  API server at %s, up in %v; Node %s registered; ClusterIPs from %s\n",
		v.env.Config.Host, time.Since(start).Round(100*time.Millisecond), nodeName, kubetest.ServiceCIDR)
	return nil
}

// startWeb creates the Service and runs web-0..web-2: each pod's
// application, its sidecar, and its Pod object.
func (v *svc) startWeb() error {
	step("Service web (port 80 → 8080, selector app=web), and pods web-0..web-2 with a sidecar each")
	s, err := v.env.Client.CoreV1().Services(namespace).Create(v.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service web: %w", err)
	}
	if v.clusterIP, err = netip.ParseAddr(s.Spec.ClusterIP); err != nil {
		return fmt.Errorf("service web: ClusterIP %q: %w", s.Spec.ClusterIP, err)
	}
	fmt.Printf("  Service web: ClusterIP %s (nothing on the node answers there: no kube-proxy)\n", v.clusterIP)
	fmt.Println("  each pod: an application on :8080 that answers its own name; Pod object labelled app=web, annotated")
	fmt.Printf("  %s (the injector's mark: a sidecar runs there), service account = its name\n", injector.StatusAnnotation)
	config := meshtest.WriteConfig(v.s, serverConfig)
	for _, p := range v.web[:3] {
		if err := v.runWeb(p, config); err != nil {
			return err
		}
	}
	start := time.Now()
	got, err := v.waitEndpoints(v.web[:3]...)
	if err != nil {
		return err
	}
	fmt.Printf("  EndpointSlice (by kube-controller-manager, %v after the last pod was Ready):\n",
		time.Since(start).Round(10*time.Millisecond))
	for _, ep := range kubetest.Endpoints(got) {
		fmt.Printf("    %-10s %s ready=%t\n", ep.Addr, ep.Pod, ep.Ready)
	}
	return nil
}

// runWeb starts pod's application and sidecar, then reports it to the
// API server as a running, ready Pod.
func (v *svc) runWeb(p *testpod.Pod, config string) error {
	hits := new(atomic.Int64)
	v.hits[p.Name] = hits
	meshtest.ServeHTTP(v.s, p, ":8080", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, p.Name)
	}))
	v.sidecars[p.Name] = meshtest.Inject(v.s, v.bin, p, nil, []string{"--config=" + config, v.iss.ProxyArg(p)})
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: namespace}}
	if _, err := v.env.Client.CoreV1().ServiceAccounts(namespace).Create(v.ctx, sa, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service account %s: %w", p.Name, err)
	}
	status, err := json.Marshal(injector.Status{InitContainers: []string{"pillion-init"}, Containers: []string{"pillion-proxy"}})
	if err != nil {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: namespace,
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{injector.StatusAnnotation: string(status)},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: p.Name,
			Containers: []corev1.Container{{
				Name: "web", Image: "pillion.invalid/web",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}},
		},
	}
	if _, err := v.env.RunPod(v.ctx, pod, p.IPv4); err != nil {
		return err
	}
	fmt.Printf("  %s  %-10s sidecar with SVID %s; Pod Running and Ready\n", p.Name, p.IPv4, v.iss.ID(p))
	return nil
}

// waitEndpoints waits until the Service's EndpointSlices list exactly
// pods, ready.
func (v *svc) waitEndpoints(pods ...*testpod.Pod) ([]discoveryv1.EndpointSlice, error) {
	want := make([]string, 0, len(pods))
	for _, p := range pods {
		want = append(want, p.IPv4.String())
	}
	slices.Sort(want)
	ctx, cancel := context.WithTimeout(v.ctx, 30*time.Second)
	defer cancel()
	return v.env.WaitEndpoints(ctx, namespace, "web", func(s []discoveryv1.EndpointSlice) bool {
		var got []string
		for _, ep := range kubetest.Endpoints(s) {
			if !ep.Ready {
				return false
			}
			got = append(got, ep.Addr)
		}
		slices.Sort(got)
		return slices.Equal(got, want)
	})
}

// startDiscovery runs `pillion discovery` on the host, waits until it is
// ready, and forwards discoveryAddr on the node to it.
func (v *svc) startDiscovery() error {
	step("Starting 'pillion discovery' on the host")
	fmt.Println("  it watches Services, EndpointSlices and Pods, and answers the sidecars over gRPC in mTLS")
	grpcPort, err := freePort()
	if err != nil {
		return err
	}
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	args := []string{"discovery", "--kubeconfig=" + v.env.Kubeconfig(v.tb), "--address=127.0.0.1",
		"--port=" + strconv.Itoa(grpcPort), "--metrics-port=" + strconv.Itoa(metricsPort),
		"--spiffe-socket=" + v.iss.SocketPath("discovery.sock")}
	start := time.Now()
	proc := testpod.StartOnNode(v.s, v.ctl, args...)
	ready := fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", metricsPort)
	v.metrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	if err := waitReady(v.ctx, ready, proc); err != nil {
		return err
	}
	fmt.Printf("  pillion %s\n", strings.Join(args, " "))
	fmt.Printf("  ready (%s answered 200: informers synced) in %v; it presents %s\n",
		ready, time.Since(start).Round(10*time.Millisecond), discoveryID)
	l, err := v.node.Listen("tcp", discoveryAddr)
	if err != nil {
		return fmt.Errorf("listen on the node at %s: %w", discoveryAddr, err)
	}
	testpod.Forward(v.s, l, "127.0.0.1:"+strconv.Itoa(grpcPort))
	fmt.Printf("  the pods reach it at %s (the node's bridge address, forwarded to 127.0.0.1:%d on the host)\n", discoveryAddr, grpcPort)
	return nil
}

// freePort is a TCP port free on the host's loopback right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls url until it answers 200, for at most 30 seconds or
// until proc exits.
func waitReady(ctx context.Context, url string, proc *testpod.Process) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if res, err := http.DefaultClient.Do(req); err != nil {
			last = err
		} else {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", res.Status, strings.TrimSpace(string(body)))
		}
		select {
		case <-proc.Done():
			return fmt.Errorf("pillion discovery exited (%v):\n%s", proc.Wait(), proc.Output())
		case <-ctx.Done():
			return fmt.Errorf("pillion discovery not ready in 30s (%s: %v):\n%s", url, last, proc.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startFrontend injects the frontend pod's sidecar, pointed at discovery.
func (v *svc) startFrontend() error {
	config := meshtest.WriteConfig(v.s, clientConfig)
	step("Injecting pillion in the frontend pod, pointed at discovery: --discovery-address=" + discoveryAddr)
	fmt.Printf("  its config (%s):\n    %s\n", config, strings.ReplaceAll(strings.TrimSpace(clientConfig), "\n", "\n    "))
	sc := meshtest.Inject(v.s, v.bin, v.frontend, nil,
		[]string{"--config=" + config, v.iss.ProxyArg(v.frontend), "--discovery-address=" + discoveryAddr})
	v.sidecars[v.frontend.Name] = sc
	v.http = meshtest.NewHTTPClient(v.frontend, false)
	fmt.Println("  the first time its application connects to an ip:port, the sidecar asks discovery what is behind it,")
	fmt.Println("  and keeps a stream open for changes")
	return nil
}
