package discovery

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/workload"
)

// A topic is what an informer event may change and what a lookup's answer
// depends on: the objects at an address, a Service with its
// EndpointSlices, a pod by name. An answer needs recomputing only after an
// event on one of its topics.
type topic struct {
	kind topicKind
	key  string // an address in netip form, or "namespace/name"
}

type topicKind uint8

const (
	topicAddr    topicKind = iota // Services with that cluster IP, pods and slice endpoints with that IP
	topicService                  // a Service and its EndpointSlices
	topicPod                      // a pod, by namespace/name
)

// topicsOf appends the topics an object touches to ts.
func topicsOf(ts []topic, obj any) []topic {
	addrs := func(ss []string) {
		for _, k := range addrKeys(ss) {
			ts = append(ts, topic{topicAddr, k})
		}
	}
	switch o := obj.(type) {
	case *corev1.Service:
		ts = append(ts, topic{topicService, o.Namespace + "/" + o.Name})
		addrs(serviceIPs(o))
	case *discv1.EndpointSlice:
		if name := o.Labels[discv1.LabelServiceName]; name != "" {
			ts = append(ts, topic{topicService, o.Namespace + "/" + name})
		}
		for _, e := range o.Endpoints {
			addrs(e.Addresses)
		}
	case *corev1.Pod:
		ts = append(ts, topic{topicPod, o.Namespace + "/" + o.Name})
		for _, ip := range o.Status.PodIPs {
			addrs([]string{ip.IP})
		}
	}
	return ts
}

// Lookup returns what stands behind dst, as the Watch API answers it:
//   - a Service's cluster IP and one of its TCP ports: kind SERVICE, the
//     endpoints of that port from all the Service's EndpointSlices of
//     dst's address family, sorted by address;
//   - the IP of a running pod not on the host's network: kind POD, the pod
//     itself at dst's port, with a Service whose EndpointSlices list it on
//     that port, if one does;
//   - anything else: kind UNKNOWN.
//
// An IPv4-mapped IPv6 address is looked up as the IPv4 address. Before
// the index synced (Synced), answers may miss objects.
func (x *Index) Lookup(dst netip.AddrPort) *discoveryv1.Destination {
	d, _ := x.lookup(dst)
	return d
}

// lookup is Lookup, with the topics the answer depends on.
func (x *Index) lookup(dst netip.AddrPort) (*discoveryv1.Destination, []topic) {
	addr := dst.Addr().Unmap().WithZone("")
	key := addrKey(addr)
	l := &lookup{x: x, deps: []topic{{topicAddr, key}}}
	if svid, err := x.own.GetX509SVID(); err == nil {
		l.td = svid.ID.TrustDomain()
	}
	if svc, port := x.serviceAt(key, dst.Port()); svc != nil {
		return l.service(svc, port, addr.Is4()), l.deps
	}
	if pod := x.podAt(key); pod != nil {
		return l.pod(pod, addr, dst.Port()), l.deps
	}
	return &discoveryv1.Destination{Kind: discoveryv1.Destination_UNKNOWN}, l.deps
}

// lookup is one lookup under way: the trust domain of the identities it
// announces and the topics it read.
type lookup struct {
	x    *Index
	td   spiffeid.TrustDomain // zero when discovery has no SVID yet: no identities
	deps []topic
}

// serviceAt returns the Service with cluster IP key and its TCP port
// port, if there is one.
func (x *Index) serviceAt(key string, port uint16) (*corev1.Service, *corev1.ServicePort) {
	objs, _ := x.services.GetIndexer().ByIndex(byClusterIP, key)
	svcs := typed[*corev1.Service](objs)
	// Two Services never share a cluster IP, but the informer may hold
	// both for a moment around a delete and a create.
	slices.SortFunc(svcs, func(a, b *corev1.Service) int { return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	for _, s := range svcs {
		for i, p := range s.Spec.Ports {
			if p.Port == int32(port) && isTCP(&p.Protocol) {
				return s, &s.Spec.Ports[i]
			}
		}
	}
	return nil, nil
}

// podAt returns the pod whose IP key is, if there is one.
func (x *Index) podAt(key string) *corev1.Pod {
	objs, _ := x.pods.GetIndexer().ByIndex(byPodIP, key)
	// One pod at a time owns an IP; around a restart the informer may
	// hold two for a moment: pick one the same way every time.
	pods := typed[*corev1.Pod](objs)
	if len(pods) == 0 {
		return nil
	}
	return slices.MinFunc(pods, func(a, b *corev1.Pod) int {
		return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
}

func (l *lookup) service(svc *corev1.Service, port *corev1.ServicePort, v4 bool) *discoveryv1.Destination {
	d := &discoveryv1.Destination{
		Kind:     discoveryv1.Destination_SERVICE,
		Service:  &discoveryv1.ServiceRef{Namespace: svc.Namespace, Name: svc.Name, PortName: port.Name},
		Protocol: protocolHint(port.AppProtocol),
	}
	name := svc.Namespace + "/" + svc.Name
	l.deps = append(l.deps, topic{topicService, name})
	family := discv1.AddressTypeIPv6
	if v4 {
		family = discv1.AddressTypeIPv4
	}
	objs, _ := l.x.slices.GetIndexer().ByIndex(byService, name)
	byAddr := make(map[string]*discoveryv1.Endpoint)
	for _, s := range typed[*discv1.EndpointSlice](objs) {
		if s.AddressType != family {
			continue
		}
		sp := slicePort(s, port.Name)
		if sp == nil {
			continue
		}
		for _, e := range s.Endpoints {
			ep := l.endpoint(s.Namespace, &e, uint16(*sp.Port))
			if ep == nil {
				continue
			}
			// An endpoint moving between slices is in both for a moment.
			if prev := byAddr[ep.Address]; prev == nil || rank(ep) > rank(prev) {
				byAddr[ep.Address] = ep
			}
		}
	}
	for _, ep := range byAddr {
		d.Endpoints = append(d.Endpoints, ep)
	}
	slices.SortFunc(d.Endpoints, func(a, b *discoveryv1.Endpoint) int { return cmp.Compare(a.Address, b.Address) })
	return d
}

// rank orders duplicates of one endpoint: ready, then serving, first.
func rank(e *discoveryv1.Endpoint) int {
	r := 0
	if e.Ready {
		r += 2
	}
	if e.Serving {
		r++
	}
	return r
}

// slicePort returns the slice's TCP port named name (the Service port's
// name, which the slice's ports carry) with a port number, or nil.
func slicePort(s *discv1.EndpointSlice, name string) *discv1.EndpointPort {
	for i, p := range s.Ports {
		if deref(p.Name) == name && isTCP(p.Protocol) && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
			return &s.Ports[i]
		}
	}
	return nil
}

// endpoint turns an EndpointSlice endpoint into the API's, at port; nil
// if it has no valid address.
func (l *lookup) endpoint(ns string, e *discv1.Endpoint, port uint16) *discoveryv1.Endpoint {
	if len(e.Addresses) == 0 {
		return nil
	}
	ip, err := netip.ParseAddr(e.Addresses[0])
	if err != nil {
		return nil
	}
	ip = ip.Unmap()
	c := e.Conditions
	// As the API defines them: nil ready means ready, nil serving means
	// as ready, nil terminating means not terminating.
	ready := c.Ready == nil || *c.Ready
	ep := &discoveryv1.Endpoint{
		Address:     netip.AddrPortFrom(ip, port).String(),
		Weight:      1,
		Zone:        deref(e.Zone),
		Ready:       ready,
		Serving:     ready,
		Terminating: c.Terminating != nil && *c.Terminating,
	}
	if c.Serving != nil {
		ep.Serving = *c.Serving
	}
	var pod *corev1.Pod
	switch r := e.TargetRef; {
	case r != nil && r.Kind == "Pod":
		key := cmp.Or(r.Namespace, ns) + "/" + r.Name
		l.deps = append(l.deps, topic{topicPod, key})
		ep.Pod = &discoveryv1.PodRef{Namespace: cmp.Or(r.Namespace, ns), Name: r.Name}
		if obj, ok, _ := l.x.pods.GetIndexer().GetByKey(key); ok {
			pod, _ = obj.(*corev1.Pod)
		}
		if pod == nil {
			// The pod informer has not seen it yet (or it is gone): whether
			// a sidecar runs there and whom it must present are unknown, and
			// sending plaintext to what may be a meshed pod is what must
			// never happen. Withhold it until the pod is seen; the pod's
			// topic brings the answer back then.
			ep.Ready, ep.Serving = false, false
		}
	case r == nil:
		key := addrKey(ip)
		l.deps = append(l.deps, topic{topicAddr, key})
		if pod = l.x.podAt(key); pod != nil {
			ep.Pod = &discoveryv1.PodRef{Namespace: pod.Namespace, Name: pod.Name}
		}
	}
	l.mesh(ep, pod)
	return ep
}

// mesh sets whether a pillion sidecar runs in pod, and the identity it
// presents, and names pod's workload.
func (l *lookup) mesh(ep *discoveryv1.Endpoint, pod *corev1.Pod) {
	if pod == nil {
		return
	}
	n := workload.Of(pod)
	ep.Workload = &discoveryv1.Workload{Name: n.Workload, App: n.App, Version: n.Version}
	if _, ok := pod.Annotations[injector.StatusAnnotation]; !ok {
		return
	}
	ep.Meshed = true
	if l.td.IsZero() {
		return
	}
	sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
	if id, err := spiffeid.FromSegments(l.td, "ns", pod.Namespace, "sa", sa); err == nil {
		ep.Identity = id.String()
	}
}

// pod answers for the IP of pod, at port.
func (l *lookup) pod(pod *corev1.Pod, ip netip.Addr, port uint16) *discoveryv1.Destination {
	l.deps = append(l.deps, topic{topicPod, pod.Namespace + "/" + pod.Name})
	ep := &discoveryv1.Endpoint{
		Address: netip.AddrPortFrom(ip, port).String(),
		Weight:  1,
		Ready:   true,
		Serving: true,
		Pod:     &discoveryv1.PodRef{Namespace: pod.Namespace, Name: pod.Name},
	}
	l.mesh(ep, pod)
	d := &discoveryv1.Destination{Kind: discoveryv1.Destination_POD, Endpoints: []*discoveryv1.Endpoint{ep}}
	// The Service whose slices list this IP on this port (slices that
	// list the IP are all found by the address topic the lookup already
	// depends on).
	objs, _ := l.x.slices.GetIndexer().ByIndex(byAddress, addrKey(ip))
	for _, s := range typed[*discv1.EndpointSlice](objs) {
		name := s.Labels[discv1.LabelServiceName]
		if name == "" {
			continue
		}
		for _, p := range s.Ports {
			if p.Port == nil || *p.Port != int32(port) || !isTCP(p.Protocol) {
				continue
			}
			ref := &discoveryv1.ServiceRef{Namespace: s.Namespace, Name: name, PortName: deref(p.Name)}
			if d.Service == nil || serviceLess(ref, d.Service) {
				d.Service, d.Protocol = ref, protocolHint(p.AppProtocol)
				ep.Zone = zoneOf(s, ip)
			}
		}
	}
	return d
}

// serviceLess orders Services that select one pod on one port, so that
// the same one is picked every time.
func serviceLess(a, b *discoveryv1.ServiceRef) bool {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.PortName, b.PortName)) < 0
}

// zoneOf returns the zone the slice gives the endpoint at ip.
func zoneOf(s *discv1.EndpointSlice, ip netip.Addr) string {
	for _, e := range s.Endpoints {
		if len(e.Addresses) > 0 {
			if a, err := netip.ParseAddr(e.Addresses[0]); err == nil && a.Unmap() == ip {
				return deref(e.Zone)
			}
		}
	}
	return ""
}

// The appProtocol values that say what a port carries. Only values that
// clearly say HTTP, or clearly say something else, give a hint; an unset
// or unknown one (and "https": TLS the sidecar detects and relays by
// itself) leaves it to detection.
var (
	httpProtocols   = []string{"http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"}
	opaqueProtocols = []string{
		"tcp", "tls", "mysql", "postgresql", "postgres", "redis", "mongo", "mongodb", "kafka",
		"amqp", "nats", "memcached", "zookeeper", "cassandra", "smtp",
	}
)

// protocolHint maps a port's appProtocol to the API's hint.
func protocolHint(appProtocol *string) discoveryv1.ProtocolHint {
	p := strings.ToLower(deref(appProtocol))
	switch {
	case slices.Contains(httpProtocols, p):
		return discoveryv1.ProtocolHint_HTTP
	case slices.Contains(opaqueProtocols, p):
		return discoveryv1.ProtocolHint_OPAQUE
	}
	return discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED
}

// isTCP reports whether a port's protocol is TCP, the default.
func isTCP(p *corev1.Protocol) bool { return p == nil || *p == "" || *p == corev1.ProtocolTCP }

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// typed returns the objects of type T among objs.
func typed[T any](objs []any) []T {
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
