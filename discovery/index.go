package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Index is what discovery knows of the cluster: informers over Services,
// EndpointSlices and Pods, trimmed to what Lookup reads, and indexed by
// cluster IP, by Service and by pod IP. Create it with NewIndex, start it
// with Run; Lookup is safe for concurrent use.
type Index struct {
	factory  informers.SharedInformerFactory
	services cache.SharedIndexInformer
	slices   cache.SharedIndexInformer
	pods     cache.SharedIndexInformer
	regs     []cache.ResourceEventHandlerRegistration
	own      x509svid.Source
	log      *zap.Logger
	events   *prometheus.CounterVec

	mu        sync.RWMutex
	listeners []func(change)
}

// The informers' extra indexes, by the keys Lookup and the reverse
// dependencies of subscriptions use.
const (
	byClusterIP = "clusterIP" // Service by each of its cluster IPs (netip form)
	byService   = "service"   // EndpointSlice by "namespace/name" of its Service
	byAddress   = "address"   // EndpointSlice by each of its endpoints' addresses
	byPodIP     = "podIP"     // Pod by each of its IPs, for pods whose IPs are their own
)

// NewIndex returns an index over client's objects. own is discovery's own
// identity: the trust domain of its SVID is the one of the SPIFFE IDs
// Lookup announces. Metrics are registered on reg: the objects held per
// kind and the informer events counted.
func NewIndex(client kubernetes.Interface, own x509svid.Source, log *zap.Logger, reg prometheus.Registerer) (*Index, error) {
	f := informers.NewSharedInformerFactory(client, 0)
	x := &Index{
		factory:  f,
		services: f.Core().V1().Services().Informer(),
		slices:   f.Discovery().V1().EndpointSlices().Informer(),
		pods:     f.Core().V1().Pods().Informer(),
		own:      own,
		log:      log,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pillion_discovery_informer_events_total",
			Help: "Events from the Kubernetes informers, by kind (service, endpointslice, pod) and event (add, update, delete).",
		}, []string{"kind", "event"}),
	}
	for _, i := range []struct {
		inf      cache.SharedIndexInformer
		indexers cache.Indexers
	}{
		{x.services, cache.Indexers{byClusterIP: serviceClusterIPs}},
		{x.slices, cache.Indexers{byService: sliceService, byAddress: sliceAddresses}},
		{x.pods, cache.Indexers{byPodIP: podIPs}},
	} {
		if err := i.inf.SetTransform(trim); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if err := i.inf.AddIndexers(i.indexers); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
	}
	if err := x.register(reg); err != nil {
		return nil, err
	}
	for _, h := range []struct {
		inf  cache.SharedIndexInformer
		kind string
	}{{x.services, kindService}, {x.slices, kindSlice}, {x.pods, kindPod}} {
		r, err := h.inf.AddEventHandler(x.handler(h.kind))
		if err != nil {
			return nil, fmt.Errorf("discovery: %s informer: %w", h.kind, err)
		}
		x.regs = append(x.regs, r)
	}
	return x, nil
}

// The kinds of objects, as metrics label them.
const (
	kindService = "service"
	kindSlice   = "endpointslice"
	kindPod     = "pod"
)

func (x *Index) register(reg prometheus.Registerer) error {
	cs := []prometheus.Collector{x.events}
	for _, o := range []struct {
		kind string
		inf  cache.SharedIndexInformer
	}{{kindService, x.services}, {kindSlice, x.slices}, {kindPod, x.pods}} {
		store := o.inf.GetStore()
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "pillion_discovery_objects",
			Help:        "Objects held in the index, by kind (service, endpointslice, pod).",
			ConstLabels: prometheus.Labels{"kind": o.kind},
		}, func() float64 { return float64(len(store.ListKeys())) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("discovery: metrics: %w", err)
		}
	}
	return nil
}

// Run starts the informers and returns when ctx ends, once they stopped.
// Synced or WaitForSync tell when the index is complete.
func (x *Index) Run(ctx context.Context) {
	// client-go logs through the logger in the context it is given.
	x.factory.StartWithContext(logr.NewContext(ctx, newLogr(x.log.Named("client-go"))))
	<-ctx.Done()
	x.factory.Shutdown()
}

// WaitForSync returns nil once every informer listed its objects and
// delivered them to the index, or ctx's error if it ended first.
func (x *Index) WaitForSync(ctx context.Context) error {
	checks := make([]cache.InformerSynced, len(x.regs))
	for i, r := range x.regs {
		checks[i] = r.HasSynced
	}
	if !cache.WaitForCacheSync(ctx.Done(), checks...) {
		return fmt.Errorf("discovery: the informers did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// Synced reports whether every informer has listed its objects and
// delivered them to the index: before that, Lookup's answers are
// incomplete.
func (x *Index) Synced() bool {
	for _, r := range x.regs {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

// ErrNotSynced is why a lookup was refused before the informers synced.
var ErrNotSynced = errors.New("discovery: not ready: the Kubernetes informers have not synced yet")

// A change is one informer event: the topics whose lookups it may have
// changed, and when it arrived.
type change struct {
	topics []topic
	at     time.Time
}

// onChange makes f hear of every change from now on. f runs on an
// informer's goroutine and must not block.
func (x *Index) onChange(f func(change)) {
	x.mu.Lock()
	x.listeners = append(x.listeners, f)
	x.mu.Unlock()
}

func (x *Index) notify(c change) {
	x.mu.RLock()
	ls := x.listeners
	x.mu.RUnlock()
	for _, f := range ls {
		f(c)
	}
}

// handler turns one informer's events into changes. It is called after
// the informer's store was updated, so a lookup made after it sees the
// event.
func (x *Index) handler(kind string) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			x.events.WithLabelValues(kind, "add").Inc()
			x.notify(change{topics: topicsOf(nil, obj), at: time.Now()})
		},
		UpdateFunc: func(old, obj any) {
			x.events.WithLabelValues(kind, "update").Inc()
			if sameTrimmed(old, obj) {
				return
			}
			x.notify(change{topics: topicsOf(topicsOf(nil, old), obj), at: time.Now()})
		},
		DeleteFunc: func(obj any) {
			x.events.WithLabelValues(kind, "delete").Inc()
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			x.notify(change{topics: topicsOf(nil, obj), at: time.Now()})
		},
	}
}

// The indexers. Addresses are indexed in netip's form (IPv6 compressed,
// IPv4 unmapped), the form Lookup asks with.

func serviceClusterIPs(obj any) ([]string, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return nil, nil
	}
	return addrKeys(serviceIPs(s)), nil
}

// serviceIPs returns the Service's cluster IPs: none for a headless
// Service ("None") or an ExternalName one.
func serviceIPs(s *corev1.Service) []string {
	if len(s.Spec.ClusterIPs) > 0 {
		return s.Spec.ClusterIPs
	}
	if s.Spec.ClusterIP != "" {
		return []string{s.Spec.ClusterIP}
	}
	return nil
}

func sliceService(obj any) ([]string, error) {
	s, ok := obj.(*discv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if name := s.Labels[discv1.LabelServiceName]; name != "" {
		return []string{s.Namespace + "/" + name}, nil
	}
	return nil, nil
}

func sliceAddresses(obj any) ([]string, error) {
	s, ok := obj.(*discv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var addrs []string
	for _, e := range s.Endpoints {
		if len(e.Addresses) > 0 {
			addrs = append(addrs, e.Addresses[0])
		}
	}
	return addrKeys(addrs), nil
}

func podIPs(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || !ownsIPs(p) {
		return nil, nil
	}
	ips := make([]string, len(p.Status.PodIPs))
	for i, ip := range p.Status.PodIPs {
		ips[i] = ip.IP
	}
	return addrKeys(ips), nil
}

// ownsIPs reports whether a pod's IPs identify it: not for a pod on the
// host's network (the IP is the node's) nor for one that ended (its IP
// may already be another pod's).
func ownsIPs(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// addrKeys returns the valid addresses of ss in netip's form, skipping
// the others ("None", "").
func addrKeys(ss []string) []string {
	keys := make([]string, 0, len(ss))
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			keys = append(keys, addrKey(a))
		}
	}
	return keys
}

// addrKey is the index key of an address.
func addrKey(a netip.Addr) string { return a.Unmap().WithZone("").String() }
