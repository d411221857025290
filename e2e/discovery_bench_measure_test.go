package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/pillionmesh/pillion/discovery"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/resolve"
)

// The measurements of BenchmarkDiscoveryScale: the timed subscriber and
// the benchmark's own watch, the sidecar's memory, discovery's memory.

// subscribe starts the timed subscriber: a resolve.Resolver, the
// sidecar's discovery client, connected in mTLS as a sidecar connects
// (its own SVID from the issuer, discovery's SPIFFE ID verified),
// subscribed to the three Services; and the benchmark's own watch on
// their EndpointSlices.
func (s *scaleBench) subscribe(ctx context.Context) {
	b := s.b
	b.Helper()
	src, err := mtls.NewWorkloadSource(s.issuer.SocketPath("bench.sock"), zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = src.Close() })
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := src.WaitReady(wctx); err != nil {
		b.Fatal(err)
	}
	s.src = src
	authz := mtls.AuthorizeExpected(spiffeid.RequireFromString(meshtest.WorkloadID("pillion-system", "pillion-discovery")))
	conn, err := grpc.NewClient("passthrough:///"+s.discovery.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(mtls.GRPCClientConfig(src, authz))))
	if err != nil {
		b.Fatal(err)
	}
	r, err := resolve.New(resolve.Config{Conn: conn, Identity: src})
	if err != nil {
		b.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(rctx); close(done) }()
	b.Cleanup(func() { stop(); <-done; _ = conn.Close() })
	s.sub = r
	for k, dst := range s.subscribed {
		var st *resolve.State
		for st = r.Resolve(wctx, dst); st == nil || len(st.Endpoints) != s.podsOf(k); st = r.Resolve(wctx, dst) {
			if wctx.Err() != nil {
				b.Fatalf("subscriber: %s: %+v, want Service %s with %d endpoints", dst, st, scaleService(k), s.podsOf(k))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	names := make([]string, scaleSubscribed)
	for k := range names {
		names[k] = scaleService(k)
	}
	s.watched = watchSlices(b, s.env, scaleNS(0), names)
}

// sliceLog is the benchmark's own watch on some Services'
// EndpointSlices: every version it saw, and when. It is safe for
// concurrent use.
type sliceLog struct {
	mu   sync.Mutex
	seen []sliceSeen
}

type sliceSeen struct {
	at    time.Time
	svc   string
	ready map[string]bool // by endpoint address
}

func watchSlices(b *testing.B, env *kubetest.Env, ns string, names []string) *sliceLog {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sel := discoveryv1.LabelServiceName + " in (" + strings.Join(names, ",") + ")"
	api := env.Client.DiscoveryV1().EndpointSlices(ns)
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		b.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return api.Watch(ctx, o)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	l := &sliceLog{}
	go func() {
		for ev := range w.ResultChan() {
			es, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			seen := sliceSeen{at: time.Now(), svc: es.Labels[discoveryv1.LabelServiceName], ready: map[string]bool{}}
			for _, e := range kubetest.Endpoints([]discoveryv1.EndpointSlice{*es}) {
				seen.ready[e.Addr] = e.Ready
			}
			l.mu.Lock()
			l.seen = append(l.seen, seen)
			l.mu.Unlock()
		}
	}()
	b.Cleanup(func() { w.Stop(); cancel() })
	return l
}

func (l *sliceLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// find returns when the watch first showed, at or after index from, a
// slice of svc with the endpoint at addr ready or not.
func (l *sliceLog) find(from int, svc, addr string, ready bool) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.seen[from:] {
		if r, ok := s.ready[addr]; ok && s.svc == svc && r == ready {
			return s.at, true
		}
	}
	return time.Time{}, false
}

// timeChanges flips the readiness of the three Services' pods one at a
// time, *scaleChanges times (each pod made not ready, then ready again),
// and returns for each the time from the benchmark's watch seeing the
// slice change, and from the status write returning, to the subscriber
// holding the new state.
func (s *scaleBench) timeChanges(ctx context.Context) (fromSlice, fromWrite []time.Duration) {
	b := s.b
	b.Helper()
	var pods []int // the subscribed Services' pods, in turn
	for i := range s.pods {
		if i%s.services < scaleSubscribed {
			pods = append(pods, i)
		}
	}
	for c := range *scaleChanges {
		i, ready := pods[(c/2)%len(pods)], c%2 == 1
		k := i % s.services
		mark := s.watched.len()
		if err := s.env.SetPodReady(ctx, scaleNS(k), scalePod(i), ready); err != nil {
			b.Fatal(err)
		}
		wrote := time.Now()
		sawSlice, sawSub, err := s.waitChange(mark, k, scalePodIP(i), ready)
		if err != nil {
			b.Fatalf("change %d, %s ready=%t: %v", c, scalePod(i), ready, err)
		}
		fromSlice = append(fromSlice, sawSub.Sub(sawSlice))
		fromWrite = append(fromWrite, sawSub.Sub(wrote))
		time.Sleep(scaleChangeGap)
	}
	if *scaleChanges%2 == 1 { // leave every pod ready, as the next phase expects
		i := pods[(*scaleChanges/2)%len(pods)]
		if err := s.env.SetPodReady(ctx, scaleNS(i%s.services), scalePod(i), true); err != nil {
			b.Fatal(err)
		}
	}
	return fromSlice, fromWrite
}

// waitChange polls, every millisecond, the subscriber's state of Service
// k and the benchmark's watch until both show the endpoint at ip ready or
// not, and returns when each first did.
func (s *scaleBench) waitChange(mark, k int, ip netip.Addr, ready bool) (sawSlice, sawSub time.Time, err error) {
	addr := netip.AddrPortFrom(ip, scaleTargetPort)
	deadline := time.Now().Add(scaleChangeLimit)
	for sawSlice.IsZero() || sawSub.IsZero() {
		now := time.Now()
		if sawSub.IsZero() && holds(s.sub.Resolve(context.Background(), s.subscribed[k]), addr, ready) {
			sawSub = now
		}
		if sawSlice.IsZero() {
			sawSlice, _ = s.watched.find(mark, scaleService(k), ip.String(), ready)
		}
		if now.After(deadline) {
			return sawSlice, sawSub, fmt.Errorf("not seen in %v: by the benchmark's watch %t, by the subscriber %t",
				scaleChangeLimit, !sawSlice.IsZero(), !sawSub.IsZero())
		}
		time.Sleep(time.Millisecond)
	}
	return sawSlice, sawSub, nil
}

// holds reports whether st has the endpoint at addr, ready or not.
func holds(st *resolve.State, addr netip.AddrPort, ready bool) bool {
	if st == nil {
		return false
	}
	for _, e := range st.Endpoints {
		if e.Addr == addr {
			return e.Ready == ready
		}
	}
	return false
}

// measureSidecar starts the client pod's sidecar afresh, has its
// application use the three Services, and returns its RSS and RssAnon 5 s
// later.
func (s *scaleBench) measureSidecar(ctx context.Context) (rss, anon int64) {
	b := s.b
	b.Helper()
	if s.client == nil {
		s.client = meshtest.Inject(b, pillionBin, s.clientPod, nil, s.proxyArgs)
	} else {
		s.client.Proxy.Kill()
		s.client.StartProxy(b, s.proxyArgs...)
	}
	if err := s.useServices(ctx); err != nil {
		b.Fatalf("%v\n%s", err, warnings(s.client))
	}
	time.Sleep(5 * time.Second)
	return medianRSS(b, s.client.Proxy.PID())
}

// useServices connects the client pod's application to each of the
// three Services and sends a request on each, as an application would,
// and waits until the sidecar's /clusters shows the three with all their
// endpoints. The endpoints are not there: the connections are closed once
// the clusters show.
func (s *scaleBench) useServices(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for _, dst := range s.subscribed {
		c, err := s.clientPod.Dial(ctx, "tcp", dst.String())
		if err != nil {
			return fmt.Errorf("connect to %s: %w", dst, err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			return fmt.Errorf("request to %s: %w", dst, err)
		}
	}
	admin := meshtest.NewHTTPClient(s.clientPod, false)
	defer admin.CloseIdleConnections()
	want := map[string]int{}
	for k := range scaleSubscribed {
		want[fmt.Sprintf("outbound|%d||%s.%s", scalePort, scaleService(k), scaleNS(k))] = s.podsOf(k)
	}
	var got map[string]int
	var err error
	for ctx.Err() == nil {
		if got, err = clusterEndpoints(ctx, admin); err == nil && maps.Equal(got, want) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the sidecar's discovered clusters: %v, want %v (%v)", got, want, err)
}

// clusterEndpoints reads the sidecar's /clusters: the discovered clusters
// ("outbound|…") with their number of endpoints.
func clusterEndpoints(ctx context.Context, admin *meshtest.HTTPClient) (map[string]int, error) {
	body, err := getBody(ctx, admin.Do, adminURL+"/clusters")
	if err != nil {
		return nil, err
	}
	got := map[string]int{}
	for line := range strings.SplitSeq(string(body), "\n") {
		parts := strings.Split(line, "::")
		switch {
		case !strings.HasPrefix(line, "outbound|"):
		case len(parts) == 3 && parts[1] == "observability_name":
			got[parts[0]] += 0 // a cluster without endpoints shows, with 0
		case len(parts) == 4 && parts[2] == "weight":
			got[parts[0]]++
		}
	}
	return got, nil
}

// medianRSS returns the medians of five reads of pid's VmRSS and RssAnon,
// a second apart.
func medianRSS(b *testing.B, pid int) (rss, anon int64) {
	b.Helper()
	var rs, as []int64
	for i := range 5 {
		if i > 0 {
			time.Sleep(time.Second)
		}
		v, err := meshtest.StatusBytes(pid, "VmRSS", "RssAnon")
		if err != nil {
			b.Fatal(err)
		}
		rs, as = append(rs, v[0]), append(as, v[1])
	}
	slices.Sort(rs)
	slices.Sort(as)
	return rs[len(rs)/2], as[len(as)/2]
}

// measureDiscovery reads the memory of the discovery that ran through
// both phases and, in the last, of one started on the full cluster; the
// two wait for their next collection side by side.
func (s *scaleBench) measureDiscovery(r *phaseResult, last bool) {
	b := s.b
	b.Helper()
	var fresh *discoveryProc
	if last {
		start := time.Now()
		fresh = startDiscovery(b, s.kubeconfig, s.issuer.SocketPath("discovery.sock"))
		r.restartReady = time.Since(start)
	}
	var wg sync.WaitGroup
	var err, freshErr error
	wg.Go(func() { r.discovery, err = settleMemory(s.discovery, *scaleSettle) })
	if fresh != nil {
		r.restart = &memFigures{}
		wg.Go(func() { *r.restart, freshErr = settleMemory(fresh, *scaleSettle) })
	}
	wg.Wait()
	if err != nil || freshErr != nil {
		b.Fatalf("discovery's memory: %v; the restarted one's: %v", err, freshErr)
	}
	if fresh != nil {
		fresh.proc.Kill()
	}
}

// settleMemory waits up to limit for d's next garbage collection, then
// scaleScavenge for the runtime to return what it freed, and reads d's
// memory. With limit 0 it reads it at once.
func settleMemory(d *discoveryProc, limit time.Duration) (memFigures, error) {
	var m memFigures
	quiet := float64(time.Now().UnixNano()) / 1e9
	deadline := time.Now().Add(limit)
	for {
		v, err := scrape(d.healthPort)
		if err != nil {
			return m, err
		}
		m.heap = int64(v["go_memstats_heap_alloc_bytes"])
		if v["go_memstats_last_gc_time_seconds"] > quiet {
			m.settled = true
			time.Sleep(scaleScavenge)
			break
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	v, err := meshtest.StatusBytes(d.proc.PID(), "VmRSS", "VmHWM", "RssAnon")
	if err != nil {
		return m, err
	}
	m.rss, m.hwm, m.anon = v[0], v[1], v[2]
	return m, nil
}

// profileIndex builds discovery's index in this process over the full
// cluster and writes a heap profile once it synced: pillion discovery
// serves no pprof. Read it with go tool pprof -focus 'discovery|informer'.
func (s *scaleBench) profileIndex(ctx context.Context, path string) error {
	idx, err := discovery.NewIndex(s.env.Client, s.src, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		return err
	}
	ictx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { idx.Run(ictx); close(done) }()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	if err := idx.WaitForSync(wctx); err != nil {
		return err
	}
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// scrape reads a metrics endpoint on 127.0.0.1 into values by series (the
// name with its labels as printed, e.g. `pillion_discovery_objects{kind="pod"}`).
func scrape(port int) (map[string]float64, error) {
	body, err := getBody(context.Background(), http.DefaultClient.Do, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if line == "" || line[0] == '#' || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// getBody GETs url with do and returns the body.
func getBody(ctx context.Context, do func(*http.Request) (*http.Response, error), url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	res, err := do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	return io.ReadAll(res.Body)
}
