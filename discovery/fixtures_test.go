package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

// The tests' trust domain is not cluster.local, so that a test would see
// identities built from anything but discovery's own SVID.
const (
	testTD       = "mesh.example"
	discoveryID  = "spiffe://" + testTD + "/ns/pillion-system/sa/pillion-discovery"
	statusMarker = "pillion.io/status"
)

// testIndex is an Index over a fake clientset holding objs, synced, with
// an SVID of testTD; it stops with the test.
func testIndex(t testing.TB, ca *issuer.CA, objs ...runtime.Object) (*Index, *fake.Clientset) {
	t.Helper()
	if ca == nil {
		ca = svidtest.CA(t, "", testTD)
	}
	client := fake.NewClientset(objs...)
	idx, err := NewIndex(client, svidtest.SourceFor(t, ca, discoveryID), zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { idx.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := idx.WaitForSync(sctx); err != nil {
		t.Fatal(err)
	}
	return idx, client
}

func ptr[T any](v T) *T { return &v }

func service(ns, name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIPs[0], ClusterIPs: clusterIPs, Ports: ports},
	}
}

func svcPort(name string, port, target int32, appProtocol string) corev1.ServicePort {
	p := corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}
	if appProtocol != "" {
		p.AppProtocol = &appProtocol
	}
	return p
}

func slice(ns, name, svc string, family discv1.AddressType, ports []discv1.EndpointPort, eps ...discv1.Endpoint) *discv1.EndpointSlice {
	return &discv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func slicePortOf(name string, port int32) discv1.EndpointPort {
	return discv1.EndpointPort{Name: &name, Protocol: ptr(corev1.ProtocolTCP), Port: &port}
}

// endpoint is an endpoint of pod ns/pod ("" for none) at addr, with
// conditions ready, serving, terminating (nil: unset).
func endpoint(addr, ns, pod, zone string, ready, serving, terminating *bool) discv1.Endpoint {
	e := discv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
	}
	if pod != "" {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}
	}
	if zone != "" {
		e.Zone = &zone
	}
	return e
}

// pod is a running pod; meshed gives it the injector's marker.
func pod(ns, name, sa string, meshed bool, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if meshed {
		p.Annotations = map[string]string{statusMarker: `{"version":"test"}`}
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}
