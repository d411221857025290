package discovery

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/svidtest"
)

// until reads responses for dst until one satisfies ok, and returns it;
// it fails the test after 30 s, naming what it saw last.
func (w *watcher) until(dst, what string, ok func(*discoveryv1.Destination) bool) *discoveryv1.Destination {
	w.t.Helper()
	deadline := time.After(30 * time.Second)
	var last *discoveryv1.Destination
	for {
		select {
		case r := <-w.resps:
			if r.GetDestination() != dst {
				continue
			}
			if last = r.GetState(); ok(last) {
				return last
			}
		case err := <-w.err:
			w.t.Fatalf("stream ended waiting for %s: %v", what, err)
		case <-deadline:
			w.t.Fatalf("%s: not within 30s; last state of %s: %v", what, dst, last)
		}
	}
}

// readyAddrs returns the addresses of d's ready endpoints.
func readyAddrs(d *discoveryv1.Destination) map[string]bool {
	out := make(map[string]bool)
	for _, e := range d.GetEndpoints() {
		if e.GetReady() {
			out[e.GetAddress()] = true
		}
	}
	return out
}

// TestWatchKubeCluster follows real EndpointSlices, made by
// kube-controller-manager from pods a real API server holds: a Service
// subscribed to as soon as it is created gets its endpoints as the pods
// come, with their identities; a second Service over the same pods, with
// an unnamed port, too; a pod that stops being ready, and one deleted, are
// sent as they happen; a pod IP is answered as that pod.
func TestWatchKubeCluster(t *testing.T) {
	env := kubetest.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "shop"
	if _, err := env.CreateNode(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := newBareHarness(t)
	var err error
	if h.idx, err = NewIndex(env.Client, svidtest.SourceFor(t, h.ca, discoveryID), zap.NewNop(), prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	ictx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.idx.Run(ictx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	if err := h.idx.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	h.serve(t, ServerConfig{})
	w := h.watch(t, h.ca, sidecarID)

	newService := func(name, port string) string {
		t.Helper()
		svc, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Name: port, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80).String()
		w.send([]string{dst}, nil) // at once: discovery may not know it yet
		return dst
	}
	web := newService("web", "http")
	ips := map[string]string{"web-0": "198.18.0.2", "web-1": "198.18.0.3"}
	for name, ip := range ips {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "web"},
				Annotations: map[string]string{statusMarker: "{}"}},
			Spec: corev1.PodSpec{ServiceAccountName: "web"},
		}
		if _, err := env.RunPod(ctx, pod, netip.MustParseAddr(ip)); err != nil {
			t.Fatal(err)
		}
	}
	d := w.until(web, "both pods ready behind web", func(d *discoveryv1.Destination) bool { return len(readyAddrs(d)) == 2 })
	for _, e := range d.GetEndpoints() {
		if !e.GetMeshed() || e.GetIdentity() != "spiffe://"+testTD+"/ns/shop/sa/web" || ips[e.GetPod().GetName()]+":8080" != e.GetAddress() {
			t.Errorf("endpoint %v: want meshed, identity .../ns/shop/sa/web, its pod's IP at 8080", e)
		}
	}

	other := newService("other", "")
	w.until(other, "both pods ready behind a second Service with an unnamed port", func(d *discoveryv1.Destination) bool {
		return d.GetKind() == discoveryv1.Destination_SERVICE && len(readyAddrs(d)) == 2
	})

	if err := env.SetPodReady(ctx, ns, "web-1", false); err != nil {
		t.Fatal(err)
	}
	w.until(web, "web-1 not ready", func(d *discoveryv1.Destination) bool {
		r := readyAddrs(d)
		return len(d.GetEndpoints()) == 2 && r["198.18.0.2:8080"] && !r["198.18.0.3:8080"]
	})
	if err := env.DeletePod(ctx, ns, "web-0", 0); err != nil {
		t.Fatal(err)
	}
	w.until(web, "web-0 gone", func(d *discoveryv1.Destination) bool {
		return len(d.GetEndpoints()) == 1 && d.GetEndpoints()[0].GetAddress() == "198.18.0.3:8080"
	})

	w.send([]string{"198.18.0.3:8080"}, nil)
	w.until("198.18.0.3:8080", "the pod at its IP", func(d *discoveryv1.Destination) bool {
		return d.GetKind() == discoveryv1.Destination_POD && d.GetEndpoints()[0].GetPod().GetName() == "web-1" &&
			d.GetService().GetNamespace() == ns
	})
}
