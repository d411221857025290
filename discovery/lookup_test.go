package discovery

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// world is a small cluster: a dual-stack Service web with two IPv4
// slices and one IPv6 slice, a headless Service db, a Service with no
// endpoints, and pods meshed, unmeshed, finished and on the host network.
func world() []runtime.Object {
	v4 := []discv1.EndpointPort{slicePortOf("http", 8080), slicePortOf("metrics", 9091)}
	yes, no := ptr(true), ptr(false)
	hostPod := pod("kube-system", "kube-proxy-1", "kube-proxy", false, "192.168.0.5")
	hostPod.Spec.HostNetwork = true
	done := pod("shop", "job-1", "batch", true, "10.1.0.30")
	done.Status.Phase = corev1.PodSucceeded
	return []runtime.Object{
		service("shop", "web", []string{"10.96.0.10", "fd00:96::10"},
			svcPort("http", 80, 8080, "http"), svcPort("metrics", 9090, 9091, "")),
		slice("shop", "web-a", "web", discv1.AddressTypeIPv4, v4,
			endpoint("10.1.0.1", "shop", "web-1", "zone-a", yes, yes, no),
			endpoint("10.1.0.2", "shop", "web-2", "zone-b", no, yes, yes)), // terminating, still serving
		slice("shop", "web-b", "web", discv1.AddressTypeIPv4, []discv1.EndpointPort{slicePortOf("http", 8080)},
			endpoint("10.1.0.3", "shop", "web-3", "", nil, nil, nil), // conditions unset
			endpoint("10.1.0.4", "shop", "web-4", "", yes, yes, no)), // a pod the informer has not seen
		slice("shop", "web-v6", "web", discv1.AddressTypeIPv6, []discv1.EndpointPort{slicePortOf("http", 8080)},
			endpoint("fd00:1::1", "shop", "web-1", "zone-a", yes, yes, no)),
		ownedBy(pod("shop", "web-1", "web", true, "10.1.0.1", "fd00:1::1"), "ReplicaSet", "web-5d8f7c9b4", "app", "web", "version", "v1", "pod-template-hash", "5d8f7c9b4"),
		ownedBy(pod("shop", "web-2", "", true, "10.1.0.2"), "ReplicaSet", "web-5d8f7c9b4", "app", "web", "version", "v1", "pod-template-hash", "5d8f7c9b4"),
		ownedBy(pod("shop", "web-3", "web", false, "10.1.0.3"), "", "", "app.kubernetes.io/name", "web-legacy"),

		service("shop", "db", []string{"None"}, svcPort("mysql", 3306, 3306, "mysql")),
		slice("shop", "db-x", "db", discv1.AddressTypeIPv4, []discv1.EndpointPort{mysqlPort()},
			endpoint("10.1.0.9", "shop", "db-0", "zone-c", yes, yes, no)),
		ownedBy(pod("shop", "db-0", "db", true, "10.1.0.9"), "StatefulSet", "db", "app.kubernetes.io/version", "8.4"),

		service("shop", "empty", []string{"10.96.0.12"}, svcPort("", 80, 80, "")),
		service("kube-system", "dns", []string{"10.96.0.53"},
			corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}),
		pod("shop", "lonely", "", true, "10.1.0.20"),
		done,
		hostPod,
	}
}

// ownedBy makes kind/name p's controller ("": none) and gives it the
// labels of the pairs kv.
func ownedBy(p *corev1.Pod, kind, name string, kv ...string) *corev1.Pod {
	if kind != "" {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr(true)}}
	}
	p.Labels = map[string]string{"team": "checkout"} // not kept
	for i := 0; i+1 < len(kv); i += 2 {
		p.Labels[kv[i]] = kv[i+1]
	}
	return p
}

func mysqlPort() discv1.EndpointPort {
	p := slicePortOf("mysql", 3306)
	p.AppProtocol = ptr("mysql")
	return p
}

func TestLookup(t *testing.T) {
	idx, _ := testIndex(t, nil, world()...)
	id := func(ns, sa string) string { return "spiffe://" + testTD + "/ns/" + ns + "/sa/" + sa }
	web := func(portName string) *discoveryv1.ServiceRef {
		return &discoveryv1.ServiceRef{Namespace: "shop", Name: "web", PortName: portName}
	}
	podRef := func(name string) *discoveryv1.PodRef { return &discoveryv1.PodRef{Namespace: "shop", Name: name} }
	webDeploy := &discoveryv1.Workload{Name: "web", App: "web", Version: "v1"}
	web1 := func(addr string) *discoveryv1.Endpoint {
		return &discoveryv1.Endpoint{Address: addr, Weight: 1, Zone: "zone-a", Ready: true, Serving: true,
			Meshed: true, Identity: id("shop", "web"), Pod: podRef("web-1"), Workload: webDeploy}
	}
	web2 := func(addr string) *discoveryv1.Endpoint {
		return &discoveryv1.Endpoint{Address: addr, Weight: 1, Zone: "zone-b", Serving: true, Terminating: true,
			Meshed: true, Identity: id("shop", "default"), Pod: podRef("web-2"), Workload: webDeploy}
	}
	web3 := &discoveryv1.Endpoint{Address: "10.1.0.3:8080", Weight: 1, Ready: true, Serving: true, Pod: podRef("web-3"), Workload: &discoveryv1.Workload{Name: "web-3", App: "web-legacy"}}
	// Ready in its slice, but its pod is not known: withheld, never
	// announced as an unmeshed endpoint.
	web4 := &discoveryv1.Endpoint{Address: "10.1.0.4:8080", Weight: 1, Pod: podRef("web-4")}
	unknown := &discoveryv1.Destination{Kind: discoveryv1.Destination_UNKNOWN}
	webHTTP := &discoveryv1.Destination{
		Kind: discoveryv1.Destination_SERVICE, Service: web("http"), Protocol: discoveryv1.ProtocolHint_HTTP,
		Endpoints: []*discoveryv1.Endpoint{web1("10.1.0.1:8080"), web2("10.1.0.2:8080"), web3, web4},
	}
	for _, tt := range []struct {
		name string
		dst  string
		want *discoveryv1.Destination
	}{
		{"service: two slices, a terminating endpoint, an unmeshed pod, nil conditions, an unseen pod", "10.96.0.10:80", webHTTP},
		{"service: an IPv4-mapped cluster IP", "[::ffff:10.96.0.10]:80", webHTTP},
		{"service: the IPv6 cluster IP has the IPv6 slice's endpoints", "[fd00:96::10]:80", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_SERVICE, Service: web("http"), Protocol: discoveryv1.ProtocolHint_HTTP,
			Endpoints: []*discoveryv1.Endpoint{web1("[fd00:1::1]:8080")},
		}},
		{"service: another port, the target port resolved by name, no appProtocol", "10.96.0.10:9090", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_SERVICE, Service: web("metrics"),
			Endpoints: []*discoveryv1.Endpoint{web1("10.1.0.1:9091"), web2("10.1.0.2:9091")},
		}},
		{"service without endpoints", "10.96.0.12:80", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_SERVICE, Service: &discoveryv1.ServiceRef{Namespace: "shop", Name: "empty"},
		}},
		{"a cluster IP on a port the service lacks", "10.96.0.10:81", unknown},
		{"a UDP service port", "10.96.0.53:53", unknown},
		{"headless service: its pod, with the service and its appProtocol", "10.1.0.9:3306", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_POD, Protocol: discoveryv1.ProtocolHint_OPAQUE,
			Service: &discoveryv1.ServiceRef{Namespace: "shop", Name: "db", PortName: "mysql"},
			Endpoints: []*discoveryv1.Endpoint{{Address: "10.1.0.9:3306", Weight: 1, Zone: "zone-c", Ready: true, Serving: true,
				Meshed: true, Identity: id("shop", "db"), Pod: podRef("db-0"), Workload: &discoveryv1.Workload{Name: "db", Version: "8.4"}}},
		}},
		{"pod IP at a service's target port", "10.1.0.1:8080", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_POD, Service: web("http"),
			Endpoints: []*discoveryv1.Endpoint{web1("10.1.0.1:8080")},
		}},
		{"pod IPv6 on a port no service selects", "[fd00:1::1]:7777", &discoveryv1.Destination{
			Kind:      discoveryv1.Destination_POD,
			Endpoints: []*discoveryv1.Endpoint{{Address: "[fd00:1::1]:7777", Weight: 1, Ready: true, Serving: true, Meshed: true, Identity: id("shop", "web"), Pod: podRef("web-1"), Workload: webDeploy}},
		}},
		{"unmeshed pod", "10.1.0.3:8080", &discoveryv1.Destination{
			Kind: discoveryv1.Destination_POD, Service: web("http"),
			Endpoints: []*discoveryv1.Endpoint{{Address: "10.1.0.3:8080", Weight: 1, Ready: true, Serving: true, Pod: podRef("web-3"), Workload: &discoveryv1.Workload{Name: "web-3", App: "web-legacy"}}},
		}},
		{"meshed pod of no service, default service account", "10.1.0.20:80", &discoveryv1.Destination{
			Kind:      discoveryv1.Destination_POD,
			Endpoints: []*discoveryv1.Endpoint{{Address: "10.1.0.20:80", Weight: 1, Ready: true, Serving: true, Meshed: true, Identity: id("shop", "default"), Pod: podRef("lonely"), Workload: &discoveryv1.Workload{Name: "lonely"}}},
		}},
		{"a finished pod's IP", "10.1.0.30:80", unknown},
		{"a host-network pod's IP (the node's)", "192.168.0.5:10250", unknown},
		{"nothing there", "10.200.0.1:80", unknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := idx.Lookup(netip.MustParseAddrPort(tt.dst))
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Lookup(%s) (-want +got):\n%s", tt.dst, diff)
			}
		})
	}
}

func TestProtocolHint(t *testing.T) {
	for _, tt := range []struct {
		appProtocol *string
		want        discoveryv1.ProtocolHint
	}{
		{nil, discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED},
		{ptr(""), discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED},
		{ptr("http"), discoveryv1.ProtocolHint_HTTP},
		{ptr("HTTP"), discoveryv1.ProtocolHint_HTTP},
		{ptr("http2"), discoveryv1.ProtocolHint_HTTP},
		{ptr("grpc"), discoveryv1.ProtocolHint_HTTP},
		{ptr("kubernetes.io/h2c"), discoveryv1.ProtocolHint_HTTP},
		{ptr("kubernetes.io/ws"), discoveryv1.ProtocolHint_HTTP},
		{ptr("https"), discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED},
		{ptr("kubernetes.io/wss"), discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED},
		{ptr("tcp"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("mysql"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("redis"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("postgresql"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("mongodb"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("kafka"), discoveryv1.ProtocolHint_OPAQUE},
		{ptr("example.com/custom"), discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED},
	} {
		if got := protocolHint(tt.appProtocol); got != tt.want {
			t.Errorf("protocolHint(%q) = %v, want %v", deref(tt.appProtocol), got, tt.want)
		}
	}
}
