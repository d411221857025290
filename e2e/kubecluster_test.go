package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestKubeClusterEndpointSlices proves the little cluster the discovery
// tests run on: a real API server and the real EndpointSlice controller,
// with the test playing the kubelet. It needs no root: no namespace is
// made, the pods' addresses are only data here.
func TestKubeClusterEndpointSlices(t *testing.T) {
	start := time.Now()
	env := kubetest.StartCluster(t)
	up := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns, node = "shop", "node-1"

	if _, err := env.CreateNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(kubetest.ServiceCIDR).Contains(clusterIP) {
		t.Fatalf("ClusterIP %q, want one in %s", svc.Spec.ClusterIP, kubetest.ServiceCIDR)
	}
	if diff := cmp.Diff([]corev1.IPFamily{corev1.IPv4Protocol}, svc.Spec.IPFamilies); diff != "" {
		t.Errorf("service IP families (-want +got):\n%s", diff)
	}

	podStart := time.Now()
	ips := map[string]string{"web-0": "198.18.0.2", "web-1": "198.18.0.3", "web-2": "198.18.0.4"}
	for _, name := range []string{"web-0", "web-1", "web-2"} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "web", Image: "pillion.invalid/web",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}}},
		}
		got, err := env.RunPod(ctx, pod, netip.MustParseAddr(ips[name]))
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.NodeName != node || got.Status.PodIP != ips[name] || got.Status.Phase != corev1.PodRunning {
			t.Fatalf("pod %s: node %q, IP %q, phase %s; want %s, %s, Running", name, got.Spec.NodeName, got.Status.PodIP, got.Status.Phase, node, ips[name])
		}
	}

	ep := func(addr, pod string, ready, serving, terminating bool) kubetest.Endpoint {
		return kubetest.Endpoint{Addr: addr, Pod: pod, Node: node, Ready: ready, Serving: serving, Terminating: terminating}
	}
	steps := []struct {
		name   string
		change func() error
		want   []kubetest.Endpoint
	}{
		{"three ready pods", func() error { return nil }, []kubetest.Endpoint{
			ep("198.18.0.2", "web-0", true, true, false),
			ep("198.18.0.3", "web-1", true, true, false),
			ep("198.18.0.4", "web-2", true, true, false),
		}},
		{"web-1 not ready", func() error { return env.SetPodReady(ctx, ns, "web-1", false) }, []kubetest.Endpoint{
			ep("198.18.0.2", "web-0", true, true, false),
			ep("198.18.0.3", "web-1", false, false, false),
			ep("198.18.0.4", "web-2", true, true, false),
		}},
		{"web-2 deleted", func() error { return env.DeletePod(ctx, ns, "web-2", 0) }, []kubetest.Endpoint{
			ep("198.18.0.2", "web-0", true, true, false),
			ep("198.18.0.3", "web-1", false, false, false),
		}},
		{"web-0 terminating", func() error { return env.DeletePod(ctx, ns, "web-0", time.Minute) }, []kubetest.Endpoint{
			ep("198.18.0.2", "web-0", false, true, true),
			ep("198.18.0.3", "web-1", false, false, false),
		}},
		{"web-1 ready again", func() error { return env.SetPodReady(ctx, ns, "web-1", true) }, []kubetest.Endpoint{
			ep("198.18.0.2", "web-0", false, true, true),
			ep("198.18.0.3", "web-1", true, true, false),
		}},
	}
	for i, step := range steps {
		stepStart := time.Now()
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		slices, err := env.WaitEndpoints(ctx, ns, "web", func(s []discoveryv1.EndpointSlice) bool {
			return cmp.Equal(step.want, kubetest.Endpoints(s))
		})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		checkSlice(t, step.name, slices)
		if i == 0 {
			t.Logf("timing: cluster up in %v, first EndpointSlice %v after the pods were created; %v in all",
				up.Round(time.Millisecond), time.Since(podStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		} else {
			t.Logf("timing: %s reflected in %v", step.name, time.Since(stepStart).Round(time.Millisecond))
		}
	}

	// The last pods leave too: the slice stays, with neither endpoints nor
	// ports (the controller's placeholder for a Service without pods).
	if err := env.DeletePod(ctx, ns, "web-0", 0); err != nil {
		t.Fatal(err)
	}
	if err := env.DeletePod(ctx, ns, "web-1", 0); err != nil {
		t.Fatal(err)
	}
	slices, err := env.WaitEndpoints(ctx, ns, "web", func(s []discoveryv1.EndpointSlice) bool {
		return len(s) == 1 && len(s[0].Endpoints) == 0
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := slices[0]; s.AddressType != discoveryv1.AddressTypeIPv4 || len(s.Ports) != 0 {
		t.Errorf("no pods: slice %s", kubetest.DescribeSlices(slices))
	}
}

// checkSlice asserts what every state of the web Service's slices shares:
// one IPv4 slice, managed by the EndpointSlice controller, port http 8080
// TCP, every endpoint's conditions set explicitly and pointing at its Pod.
func checkSlice(t *testing.T, step string, slices []discoveryv1.EndpointSlice) {
	t.Helper()
	if len(slices) != 1 {
		t.Fatalf("%s: %d slices, want 1:%s", step, len(slices), kubetest.DescribeSlices(slices))
	}
	s := slices[0]
	if s.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("%s: address type %s, want IPv4", step, s.AddressType)
	}
	if got := s.Labels[discoveryv1.LabelManagedBy]; got != "endpointslice-controller.k8s.io" {
		t.Errorf("%s: managed by %q, want endpointslice-controller.k8s.io", step, got)
	}
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	wantPorts := []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}}
	if diff := cmp.Diff(wantPorts, s.Ports); diff != "" {
		t.Errorf("%s: ports (-want +got):\n%s", step, diff)
	}
	for _, e := range s.Endpoints {
		c := e.Conditions
		if c.Ready == nil || c.Serving == nil || c.Terminating == nil {
			t.Errorf("%s: endpoint %v has unset conditions %+v", step, e.Addresses, c)
		}
		if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || e.TargetRef.Namespace != "shop" {
			t.Errorf("%s: endpoint %v targets %+v, want a Pod in shop", step, e.Addresses, e.TargetRef)
		}
	}
}

// TestKubeClusterIssuerOptions checks the identities the discovery tests
// hand out: an extra socket for a server on the node (by relative and by
// absolute path), and a pod given another workload's ID. The issuer only
// uses the pods' names, so no namespace (and no root) is needed.
func TestKubeClusterIssuerOptions(t *testing.T) {
	a, b := &testpod.Pod{Name: "a"}, &testpod.Pod{Name: "b"}
	discovery := meshtest.WorkloadID("pillion-system", "pillion-discovery")
	abs := filepath.Join(t.TempDir(), "other.sock")
	iss := meshtest.StartIssuerWith(t, pillionBin, time.Hour, meshtest.IssuerOptions{
		IDs:     map[string]string{"b": meshtest.PodID(a)},
		Sockets: map[string]string{"discovery.sock": discovery, abs: meshtest.WorkloadID("shop", "web")},
	}, a, b)
	if got := iss.SocketPath(abs); got != abs {
		t.Errorf("SocketPath(%q) = %q, want it unchanged", abs, got)
	}
	for _, tt := range []struct {
		name, sock, want string
	}{
		{"pod a", iss.Socket(a), "spiffe://cluster.local/ns/default/sa/a"},
		{"pod b as a", iss.Socket(b), "spiffe://cluster.local/ns/default/sa/a"},
		{"discovery", iss.SocketPath("discovery.sock"), "spiffe://cluster.local/ns/pillion-system/sa/pillion-discovery"},
		{"absolute", abs, "spiffe://cluster.local/ns/shop/sa/web"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+tt.sock))
			if err != nil {
				t.Fatalf("fetch SVID from %s: %v", tt.sock, err)
			}
			if got := svid.ID.String(); got != tt.want {
				t.Errorf("SVID %s, want %s", got, tt.want)
			}
		})
	}
	if got, want := iss.ID(b), meshtest.PodID(a); got != want {
		t.Errorf("ID(b) = %q, want %q", got, want)
	}
	if got, want := iss.ID(a), meshtest.PodID(a); got != want {
		t.Errorf("ID(a) = %q, want %q", got, want)
	}
}
