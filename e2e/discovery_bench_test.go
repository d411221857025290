package e2e

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/resolve"
)

// BenchmarkDiscoveryScale's settings, given after -args (make
// bench-discovery passes them).
var (
	scaleServices = flag.Int("discovery.services", 2000, "BenchmarkDiscoveryScale: Services in the full cluster")
	scalePods     = flag.Int("discovery.pods", 20000, "BenchmarkDiscoveryScale: Pods in the full cluster, spread evenly over the Services")
	scaleChanges  = flag.Int("discovery.changes", 200, "BenchmarkDiscoveryScale: readiness changes timed in each phase")
	scaleSettle   = flag.Duration("discovery.settle", 150*time.Second,
		"BenchmarkDiscoveryScale: how long to wait for discovery's next garbage collection before reading its memory (0: read it at once)")
	scaleProfile = flag.String("discovery.heapprofile", "",
		"BenchmarkDiscoveryScale: write a heap profile of an in-process discovery index over the full cluster to this file")
)

const (
	scaleSubscribed = 3   // Services the sidecar and the timed subscriber use
	scaleWorkers    = 16  // concurrent writers while populating
	scalePerNS      = 100 // Services per namespace
	scalePort       = 80
	scaleTargetPort = 8080
	// scaleChangeGap is the quiet between two timed changes, so that each
	// is the first after a quiet period (sent at once, not coalesced).
	scaleChangeGap = 50 * time.Millisecond
	// scaleChangeLimit: a change the subscriber has not seen by then fails
	// the benchmark.
	scaleChangeLimit = 10 * time.Second
	// scaleScavenge is how long the Go runtime gets, after a collection,
	// to return what it freed before RSS is read.
	scaleScavenge = 10 * time.Second
)

// scalePodNet holds the benchmark's pods' IPs. They are only API objects:
// nothing listens there, and nothing routes there out of the test pods'
// node, so the sidecar's connections to them go nowhere.
var scalePodNet = netip.MustParsePrefix("198.18.128.0/17")

// BenchmarkDiscoveryScale measures `pillion discovery` and a sidecar on a
// real cluster (kube-apiserver, etcd, kube-controller-manager's
// EndpointSlices) of -discovery.services Services each selecting its share
// of -discovery.pods meshed Pods (issue 13: 2,000 and 20,000), in two
// phases: "empty", where the cluster holds only the three Services the
// subscribers use and their pods, then "full". In each phase:
//
//   - update latency: -discovery.changes pod readiness flips in the three
//     Services (through the status subresource, as a kubelet reports a
//     readiness probe), each timed from the benchmark's own watch seeing
//     the controller's EndpointSlice change to a subscribed discovery
//     client (resolve.Resolver over the real mTLS stream) holding the new
//     state, and from the status write returning;
//   - sidecar RSS: a real sidecar (pillion proxy with capture, in a test
//     pod) freshly started, subscribed to the three Services by its
//     application's connections;
//   - discovery RSS, of the process that ran through both phases, after
//     its next garbage collection (-discovery.settle).
//
// In the full phase a second discovery started on the full cluster gives
// the time to be ready and its peak RSS. It runs its scenario once
// whatever b.N: run it with -benchtime 1x, as make bench-discovery does.
// It needs root.
func BenchmarkDiscoveryScale(b *testing.B) {
	s := newScaleBench(b)
	empty := s.phase(0, scaleSubscribed)
	full := s.phase(scaleSubscribed, s.services)
	s.report(empty, full)
}

// scaleBench is the benchmark's cluster and what runs against it.
type scaleBench struct {
	b              *testing.B
	env            *kubetest.Env
	node           *testpod.Node
	issuer         *meshtest.Issuer
	kubeconfig     string
	discovery      *discoveryProc // runs through both phases
	clientPod      *testpod.Pod
	client         *meshtest.Sidecar // nil until the first phase starts it
	proxyArgs      []string
	services, pods int
	created        atomic.Int64     // pods created so far
	subscribed     []netip.AddrPort // ClusterIP:port of Services 0, 1 and 2
	src            *mtls.WorkloadSource
	sub            *resolve.Resolver
	watched        *sliceLog
	start          time.Time
}

// phaseResult is what one phase measured.
type phaseResult struct {
	name                 string
	services, pods, eps  int           // objects discovery holds
	populate, complete   time.Duration // writing the objects; until the slices list every pod
	held                 time.Duration // until discovery holds every object
	fromSlice, fromWrite []time.Duration
	sidecar, sidecarAnon int64 // a fresh sidecar's RSS and RssAnon
	sidecarAged          int64 // the previous phase's sidecar, after this phase's populate
	discovery            memFigures
	restart              *memFigures   // a discovery started on this cluster
	restartReady         time.Duration // until it was ready
}

// memFigures are a process's memory: VmRSS, VmHWM, RssAnon (RSS less the
// binary's pages and other files), and the Go heap in use at its last
// garbage collection; settled says whether one ran after the benchmark
// started waiting (else heap is the heap at the last read).
type memFigures struct {
	rss, hwm, anon, heap int64
	settled              bool
}

func newScaleBench(b *testing.B) *scaleBench {
	b.Helper()
	privileged.Require(b, "ip", "iptables", "ip6tables", "setpriv")
	services, pods := *scaleServices, *scalePods
	if services <= scaleSubscribed || pods < services || pods > 1<<15-2 {
		b.Fatalf("-discovery.services=%d -discovery.pods=%d: want more than %d Services, at least one pod each, at most %d pods",
			services, pods, scaleSubscribed, 1<<15-2)
	}
	s := &scaleBench{start: time.Now(), b: b, env: kubetest.StartCluster(b), node: testpod.NewNode(b), services: services, pods: pods,
		subscribed: make([]netip.AddrPort, scaleSubscribed)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.env.CreateNode(ctx, nodeName); err != nil {
		b.Fatal(err)
	}
	for n := range (services + scalePerNS - 1) / scalePerNS {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%d", n)}}
		if _, err := s.env.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	s.clientPod = s.node.AddPod(b, "client")
	s.issuer = meshtest.StartIssuerWith(b, pillionBin, time.Hour, meshtest.IssuerOptions{Sockets: map[string]string{
		"discovery.sock": meshtest.WorkloadID("pillion-system", "pillion-discovery"),
		"bench.sock":     meshtest.WorkloadID(clusterNS, "discovery-bench"),
	}}, s.clientPod)
	s.kubeconfig = s.env.Kubeconfig(b)
	s.discovery = startDiscovery(b, s.kubeconfig, s.issuer.SocketPath("discovery.sock"))
	l, err := s.node.Listen("tcp", hostPort(s.node.BridgeV4(), discoveryPort))
	if err != nil {
		b.Fatal(err)
	}
	testpod.Forward(b, l, s.discovery.addr)
	s.proxyArgs = []string{s.issuer.ProxyArg(s.clientPod), "--dial-timeout=500ms",
		"--discovery-address=" + hostPort(s.node.BridgeV4(), discoveryPort)}
	return s
}

// printf prints a line on the benchmark's output at once, with the time
// since the benchmark started: b.Log's output would be kept until the end
// and cut to 10 lines. The benchmark runs once, before the testing
// package prints its name and figures, so the lines come before them.
func (s *scaleBench) printf(format string, args ...any) {
	fmt.Printf("[%7s] %s\n", time.Since(s.start).Round(time.Second), fmt.Sprintf(format, args...))
}

func scaleNS(k int) string      { return fmt.Sprintf("bench-%d", k/scalePerNS) }
func scaleService(k int) string { return fmt.Sprintf("svc-%04d", k) }
func scalePod(i int) string     { return fmt.Sprintf("pod-%05d", i) }

// scalePodIP is pod i's IP in scalePodNet.
func scalePodIP(i int) netip.Addr {
	a := scalePodNet.Addr().As4()
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(a[:])+uint32(i)+1)
	return netip.AddrFrom4(a)
}

// podsOf is how many pods Service k selects: pods i with i%services == k.
func (s *scaleBench) podsOf(k int) int { return (s.pods - k + s.services - 1) / s.services }

// phase creates Services [from, to) with their pods and measures.
func (s *scaleBench) phase(from, to int) phaseResult {
	b := s.b
	b.Helper()
	r := phaseResult{name: "empty"}
	if from > 0 {
		r.name = "full"
	}
	ctx := context.Background()
	start := time.Now()
	if err := s.populate(ctx, from, to); err != nil {
		b.Fatalf("%s: populate: %v", r.name, err)
	}
	r.populate = time.Since(start)
	slices, err := s.waitSlices(ctx)
	if err != nil {
		b.Fatalf("%s: %v", r.name, err)
	}
	r.complete = time.Since(start)
	if r.services, r.pods, r.eps, err = s.waitHeld(ctx, s.discovery, slices); err != nil {
		b.Fatalf("%s: %v", r.name, err)
	}
	r.held = time.Since(start)
	s.printf("%s: %d Services and %d pods written in %v; their EndpointSlices complete after %v; discovery holds them after %v",
		r.name, to, s.created.Load(), r.populate.Round(time.Millisecond), r.complete.Round(time.Millisecond), r.held.Round(time.Millisecond))
	if s.sub == nil {
		s.subscribe(ctx)
	}
	r.fromSlice, r.fromWrite = s.timeChanges(ctx)
	s.printf("%s: %d changes timed: slice seen → subscriber %s", r.name, len(r.fromSlice), quantiles(r.fromSlice))
	if s.client != nil {
		r.sidecarAged, _ = medianRSS(b, s.client.Proxy.PID())
	}
	r.sidecar, r.sidecarAnon = s.measureSidecar(ctx)
	s.printf("%s: sidecar RSS %s; reading discovery's memory after its next GC (up to %v)", r.name, mb(r.sidecar), *scaleSettle)
	last := to == s.services
	s.measureDiscovery(&r, last)
	if p := *scaleProfile; p != "" && last {
		if err := s.profileIndex(ctx, p); err != nil {
			b.Fatalf("heap profile: %v", err)
		}
		s.printf("heap profile of an in-process index over the full cluster written to %s", p)
	}
	return r
}

// populate creates Services [from, to) in namespaces of scalePerNS, each
// after its pods (so that the controller writes each slice once), with
// scaleWorkers writers.
func (s *scaleBench) populate(ctx context.Context, from, to int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan int)
	var wg sync.WaitGroup
	var done atomic.Int64
	for range scaleWorkers {
		wg.Go(func() {
			for k := range work {
				if err := s.createService(ctx, k); err != nil {
					cancel(err)
				}
				done.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	go func() { // progress, for the long runs
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.printf("populate: %d of %d Services, %d pods", done.Load(), to-from, s.created.Load())
			}
		}
	}()
	for k := from; k < to && ctx.Err() == nil; k++ {
		work <- k
	}
	close(work)
	wg.Wait()
	close(stop)
	return context.Cause(ctx)
}

// createService creates Service k's pods, reported running and Ready at
// their IPs, then the Service (port 80 → 8080).
func (s *scaleBench) createService(ctx context.Context, k int) error {
	ns, name := scaleNS(k), scaleService(k)
	for i := k; i < s.pods; i += s.services {
		_, err := s.env.RunPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: scalePod(i), Namespace: ns, Labels: map[string]string{"app": name},
				Annotations: map[string]string{injector.StatusAnnotation: `{"version":"bench"}`}, // meshed
			},
			Spec: corev1.PodSpec{
				NodeName: nodeName, ServiceAccountName: name,
				Containers: []corev1.Container{{Name: "app", Image: "pillion.invalid/app",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: scaleTargetPort}}}},
			},
		}, scalePodIP(i))
		if err != nil {
			return err
		}
		s.created.Add(1)
	}
	svc, err := s.env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: scalePort, TargetPort: intstr.FromInt32(scaleTargetPort)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	if k < scaleSubscribed {
		s.subscribed[k] = netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), scalePort)
	}
	return nil
}

// waitSlices waits until the EndpointSlices list every pod created, ready,
// and returns how many slices the cluster holds.
func (s *scaleBench) waitSlices(ctx context.Context) (int, error) {
	want := int(s.created.Load())
	deadline := time.Now().Add(15 * time.Minute)
	for {
		list, err := s.env.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
		got := 0
		if err == nil {
			for _, e := range kubetest.Endpoints(list.Items) {
				if a, perr := netip.ParseAddr(e.Addr); perr == nil && scalePodNet.Contains(a) && e.Ready {
					got++
				}
			}
			if got == want {
				return len(list.Items), nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the EndpointSlices list %d ready pods after 15 minutes, want %d (last error: %v)", got, want, err)
		}
		time.Sleep(2 * time.Second)
	}
}

// waitHeld waits until discovery d holds every Service, pod and slice of
// the cluster, and returns how many of each.
func (s *scaleBench) waitHeld(ctx context.Context, d *discoveryProc, slices int) (services, pods, eps int, err error) {
	list, err := s.env.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, 0, 0, err
	}
	want := [3]int{len(list.Items), int(s.created.Load()), slices}
	var got [3]int
	deadline := time.Now().Add(5 * time.Minute)
	for {
		m, err := scrape(d.healthPort)
		if err == nil {
			for i, kind := range []string{"service", "pod", "endpointslice"} {
				got[i] = int(m[`pillion_discovery_objects{kind="`+kind+`"}`])
			}
			if got == want {
				return got[0], got[1], got[2], nil
			}
		}
		if time.Now().After(deadline) {
			return 0, 0, 0, fmt.Errorf("discovery holds %v Services, pods, slices after 5 minutes, want %v (last error: %v)", got, want, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// report prints the figures as a table and reports the headline ones as
// benchmark metrics.
func (s *scaleBench) report(empty, full phaseResult) {
	b := s.b
	objects := func(r phaseResult) int { return r.services + r.pods + r.eps }
	added := float64(objects(full) - objects(empty))
	perObject := func(f func(memFigures) int64) string {
		return fmt.Sprintf("%.0f", float64(f(full.discovery)-f(empty.discovery))/added)
	}
	ed, fd := empty.discovery, full.discovery
	p99 := percentile(full.fromSlice, 0.99)
	delta := full.sidecar - empty.sidecar
	var t strings.Builder
	w := tabwriter.NewWriter(&t, 0, 8, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(w, strings.Join(cells, "\t")) }
	row("", empty.name, full.name, "per object added, B")
	row("objects discovery holds: Services, Pods, EndpointSlices",
		fmt.Sprintf("%d, %d, %d", empty.services, empty.pods, empty.eps), fmt.Sprintf("%d, %d, %d", full.services, full.pods, full.eps), "")
	row("discovery RSS (VmRSS)", mb(ed.rss), mb(fd.rss), perObject(func(m memFigures) int64 { return m.rss }))
	row("  of which anonymous (RssAnon)", mb(ed.anon), mb(fd.anon), perObject(func(m memFigures) int64 { return m.anon }))
	row("  Go heap at its last GC", mb(ed.heap), mb(fd.heap), perObject(func(m memFigures) int64 { return m.heap }))
	row("  read after a GC (else at once)", fmt.Sprint(ed.settled), fmt.Sprint(fd.settled), "")
	row("discovery peak RSS (VmHWM)", mb(ed.hwm), mb(fd.hwm), "")
	if r := full.restart; r != nil {
		row("discovery started on the full cluster: ready after", "", full.restartReady.Round(time.Millisecond).String(), "")
		row("  its RSS, RssAnon, peak RSS", "", mb(r.rss)+", "+mb(r.anon)+", "+mb(r.hwm), "")
	}
	row("update, slice seen → subscriber: p50 / p99 / max", quantiles(empty.fromSlice), quantiles(full.fromSlice),
		"target p99 ≤ 1 s: "+verdict(p99 <= time.Second))
	row("update, pod status write → subscriber", quantiles(empty.fromWrite), quantiles(full.fromWrite), "")
	row("sidecar RSS, fresh, 3 Services subscribed", mb(empty.sidecar), mb(full.sidecar),
		fmt.Sprintf("Δ %+.2f MB, target ≤ 2 MB: %s", float64(delta)/(1<<20), verdict(delta <= 2<<20)))
	row("  of which anonymous (RssAnon)", mb(empty.sidecarAnon), mb(full.sidecarAnon), "")
	row("sidecar RSS, started in the empty cluster", "", mb(full.sidecarAged), "")
	populate := func(r phaseResult) string {
		return fmt.Sprintf("%v; %v; %v", r.populate.Round(time.Second), r.complete.Round(time.Second), r.held.Round(time.Second))
	}
	row("populate: objects written; slices complete; discovery holds all", populate(empty), populate(full), "")
	w.Flush()
	s.printf("%d Services, %d Pods, %d timed changes a phase\n%s", s.services, s.pods, *scaleChanges, t.String())

	b.ReportMetric(0, "ns/op") // the scenario runs once; its duration means nothing
	b.ReportMetric(float64(ed.rss)/(1<<20), "discovery-rss-empty-MB")
	b.ReportMetric(float64(fd.rss)/(1<<20), "discovery-rss-full-MB")
	b.ReportMetric(float64(fd.rss-ed.rss)/added, "discovery-rss-B/object")
	b.ReportMetric(float64(fd.heap-ed.heap)/added, "discovery-heap-B/object")
	b.ReportMetric(ms(percentile(full.fromSlice, 0.5)), "update-p50-ms")
	b.ReportMetric(ms(p99), "update-p99-ms")
	b.ReportMetric(ms(percentile(full.fromSlice, 1)), "update-max-ms")
	b.ReportMetric(float64(empty.sidecar)/(1<<20), "sidecar-rss-empty-MB")
	b.ReportMetric(float64(full.sidecar)/(1<<20), "sidecar-rss-full-MB")
	b.ReportMetric(float64(delta)/(1<<20), "sidecar-rss-delta-MB")
}

// percentile is the q-quantile of d (nearest rank).
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(d))
	return s[max(0, min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1))]
}

func quantiles(d []time.Duration) string {
	return fmt.Sprintf("%.1f / %.1f / %.1f ms", ms(percentile(d, 0.5)), ms(percentile(d, 0.99)), ms(percentile(d, 1)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
