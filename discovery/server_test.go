package discovery

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

// harness is a Server over world() behind a real gRPC server in mTLS on
// loopback.
type harness struct {
	ca     *issuer.CA
	other  *issuer.CA // of another trust domain, federated: the server has its bundle
	logs   *observer.ObservedLogs
	idx    *Index
	client *fake.Clientset
	srv    *Server
	reg    *prometheus.Registry
	addr   string
}

func newHarness(t *testing.T, cfg ServerConfig) *harness {
	t.Helper()
	h := newBareHarness(t)
	h.idx, h.client = testIndex(t, h.ca, world()...)
	h.serve(t, cfg)
	return h
}

func newBareHarness(t *testing.T) *harness {
	return &harness{ca: svidtest.CA(t, "", testTD), other: svidtest.CA(t, "", "other.example"), reg: prometheus.NewRegistry()}
}

func (h *harness) serve(t *testing.T, cfg ServerConfig) {
	t.Helper()
	var err error
	var core zapcore.Core
	core, h.logs = observer.New(zap.InfoLevel)
	if h.srv, err = NewServer(h.idx, cfg, zap.New(core), h.reg); err != nil {
		t.Fatal(err)
	}
	id := svidtest.SourceFor(t, h.ca, discoveryID)
	id.Bundles = x509bundle.NewSet(h.ca.Bundle(), h.other.Bundle())
	g := NewGRPCServer(h.srv, id)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	go func() { _ = g.Serve(l) }()
	t.Cleanup(func() { h.srv.Close(); g.Stop() })
}

// watcher is a client's stream, its responses pumped into a channel.
type watcher struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv1.WatchRequest, discoveryv1.WatchResponse]
	resps  chan *discoveryv1.WatchResponse
	err    chan error
}

// open opens a stream as a sidecar with an SVID for id from ca.
func (h *harness) open(t *testing.T, ca *issuer.CA, id string) (grpc.BidiStreamingClient[discoveryv1.WatchRequest, discoveryv1.WatchResponse], error) {
	t.Helper()
	src := svidtest.SourceFor(t, ca, id)
	src.Bundles = x509bundle.NewSet(h.ca.Bundle(), h.other.Bundle())
	creds := credentials.NewTLS(mtls.GRPCClientConfig(src, mtls.AuthorizeID(spiffeid.RequireFromString(discoveryID))))
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	return discoveryv1.NewDiscoveryClient(conn).Watch(ctx)
}

// watch opens a stream as open does, its responses pumped into a channel.
func (h *harness) watch(t *testing.T, ca *issuer.CA, id string) *watcher {
	t.Helper()
	stream, err := h.open(t, ca, id)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{t: t, stream: stream, resps: make(chan *discoveryv1.WatchResponse, 100), err: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				w.err <- err
				return
			}
			w.resps <- r
		}
	}()
	return w
}

func (w *watcher) send(subscribe, unsubscribe []string) {
	w.t.Helper()
	// io.EOF: the server ended the stream; Recv returns its status.
	err := w.stream.Send(&discoveryv1.WatchRequest{Subscribe: subscribe, Unsubscribe: unsubscribe})
	if err != nil && !errors.Is(err, io.EOF) {
		w.t.Fatalf("send: %v", err)
	}
}

// next returns the next response, failing the test after 5 s or if the
// stream ended.
func (w *watcher) next() *discoveryv1.WatchResponse {
	w.t.Helper()
	select {
	case r := <-w.resps:
		return r
	case err := <-w.err:
		w.t.Fatalf("stream ended: %v", err)
	case <-time.After(5 * time.Second):
		w.t.Fatal("no response within 5s")
	}
	return nil
}

// end returns the error the stream ended with, failing the test if a
// response comes instead or nothing within 5 s.
func (w *watcher) end() error {
	w.t.Helper()
	select {
	case r := <-w.resps:
		w.t.Fatalf("got %v, want the stream to end", r)
	case err := <-w.err:
		return err
	case <-time.After(5 * time.Second):
		w.t.Fatal("the stream did not end within 5s")
	}
	return nil
}

// quiet fails the test if a response arrives within d.
func (w *watcher) quiet(d time.Duration) {
	w.t.Helper()
	select {
	case r := <-w.resps:
		w.t.Errorf("unexpected response %v", r)
	case <-time.After(d):
	}
}

const (
	webDst    = "10.96.0.10:80"
	lonelyDst = "10.1.0.20:80"
	sidecarID = "spiffe://" + testTD + "/ns/shop/sa/frontend"
)

// checkState fails the test unless r answers dst with what the index
// holds now.
func (h *harness) checkState(t *testing.T, r *discoveryv1.WatchResponse, dst string) {
	t.Helper()
	want := h.idx.Lookup(netip.MustParseAddrPort(dst))
	if r.GetDestination() != dst || !proto.Equal(r.GetState(), want) {
		t.Errorf("got %v\nwant destination %s, state %v", r, dst, want)
	}
}

// setZone updates the zone of the first endpoint of slice shop/name.
func (h *harness) setZone(t *testing.T, name, zone string) {
	t.Helper()
	ctx := context.Background()
	s, err := h.client.DiscoveryV1().EndpointSlices("shop").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints[0].Zone = &zone
	if _, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// notified returns a channel closed once the index has notified a change
// that touches topic: by then the server has handed it to its streams.
func (h *harness) notified(tp topic) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once // the informers notify from their own goroutines
	h.idx.onChange(func(c change) {
		if slices.Contains(c.topics, tp) {
			once.Do(func() { close(ch) })
		}
	})
	return ch
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestWatch: a subscription is answered at once; a change to an
// EndpointSlice sends the Service's new state and nothing for the other
// subscription; after unsubscribing, changes are no longer sent.
func TestWatch(t *testing.T) {
	h := newHarness(t, ServerConfig{Coalesce: time.Millisecond})
	w := h.watch(t, h.ca, sidecarID)

	w.send([]string{webDst, lonelyDst}, nil)
	h.checkState(t, w.next(), webDst)
	h.checkState(t, w.next(), lonelyDst)
	if got := gauge(t, h.reg, "pillion_discovery_streams"); got != 1 {
		t.Errorf("streams gauge = %v, want 1", got)
	}
	if got := gauge(t, h.reg, "pillion_discovery_subscriptions"); got != 2 {
		t.Errorf("subscriptions gauge = %v, want 2", got)
	}

	h.setZone(t, "web-b", "zone-z")
	r := w.next()
	h.checkState(t, r, webDst)
	if got := r.GetState().GetEndpoints()[2]; got.GetAddress() != "10.1.0.3:8080" || got.GetZone() != "zone-z" {
		t.Errorf("after the slice update, endpoint %v; want 10.1.0.3:8080 in zone-z", got)
	}
	if got := testutil.ToFloat64(h.srv.m.updates.WithLabelValues("change")); got != 1 {
		t.Errorf("updates sent for changes = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(h.srv.m.delay); got != 1 {
		t.Errorf("delay histogram has %d series, want 1", got)
	}

	// Subscribing again sends the state again, unchanged.
	w.send([]string{webDst}, nil)
	h.checkState(t, w.next(), webDst)

	// Unsubscribe; the answer to a later subscription shows the server
	// has handled the unsubscription (requests are handled in order).
	w.send(nil, []string{webDst})
	w.send([]string{"10.200.0.1:80"}, nil)
	h.checkState(t, w.next(), "10.200.0.1:80")
	sliceSeen := h.notified(topic{topicService, "shop/web"})
	h.setZone(t, "web-b", "zone-y")
	waitClosed(t, sliceSeen, "the slice update")
	// The next response is the lonely pod's change, not the web Service's.
	ctx := context.Background()
	p, err := h.client.CoreV1().Pods("shop").Get(ctx, "lonely", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = nil
	if _, err := h.client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = w.next()
	h.checkState(t, r, lonelyDst)
	if r.GetState().GetEndpoints()[0].GetMeshed() {
		t.Error("the pod is still meshed after its marker was removed")
	}
	w.quiet(100 * time.Millisecond)
	if got := gauge(t, h.reg, "pillion_discovery_subscriptions"); got != 2 {
		t.Errorf("subscriptions gauge = %v, want 2", got)
	}
}

// TestWatchShared: streams subscribed to one destination share its
// computation: one lookup for both answers, one per change, and each
// stream gets the change.
func TestWatchShared(t *testing.T) {
	h := newHarness(t, ServerConfig{Coalesce: time.Millisecond})
	a, b := h.watch(t, h.ca, sidecarID), h.watch(t, h.ca, "spiffe://"+testTD+"/ns/shop/sa/other")
	a.send([]string{webDst}, nil)
	h.checkState(t, a.next(), webDst)
	b.send([]string{webDst, "[::ffff:10.96.0.10]:80", webDst}, nil)
	for _, dst := range []string{webDst, "[::ffff:10.96.0.10]:80", webDst} {
		h.checkState(t, b.next(), dst)
	}
	lookups := func() float64 { return testutil.ToFloat64(h.srv.m.lookups) }
	if got := lookups(); got != 1 {
		t.Errorf("%v lookups for one destination held by two streams, want 1", got)
	}
	h.setZone(t, "web-b", "zone-z")
	h.checkState(t, a.next(), webDst)
	got := map[string]bool{}
	for range 2 {
		r := b.next()
		h.checkState(t, r, r.GetDestination())
		got[r.GetDestination()] = true
	}
	if !got[webDst] || !got["[::ffff:10.96.0.10]:80"] {
		t.Errorf("the second stream got updates for %v, want both of its subscriptions", got)
	}
	if got := lookups(); got != 2 {
		t.Errorf("%v lookups after one change, want 2", got)
	}
	a.quiet(50 * time.Millisecond)
	b.quiet(50 * time.Millisecond)
}

// TestWatchCoalesces: a burst of changes within Coalesce is sent as the
// first change at once, then one update with the last state.
func TestWatchCoalesces(t *testing.T) {
	h := newHarness(t, ServerConfig{Coalesce: time.Second})
	w := h.watch(t, h.ca, sidecarID)
	w.send([]string{webDst}, nil)
	w.next()
	last := h.notified(topic{topicAddr, "10.1.0.3"})
	for _, z := range []string{"z1", "z2", "z3", "z4", "z5"} {
		h.setZone(t, "web-b", z)
	}
	waitClosed(t, last, "the slice updates")
	var got []string
	for len(got) == 0 || got[len(got)-1] != "z5" {
		got = append(got, w.next().GetState().GetEndpoints()[2].GetZone())
	}
	if len(got) > 2 {
		t.Errorf("zones sent %v: want at most the first and the last", got)
	}
	w.quiet(1500 * time.Millisecond)
}

// TestWatchRefuses: the errors that end a stream, as the client reads
// them.
func TestWatchRefuses(t *testing.T) {
	h := newHarness(t, ServerConfig{MaxSubscriptions: 2})
	for _, tt := range []struct {
		name      string
		subscribe []string
		unsub     []string
		code      codes.Code
		msg       string
	}{
		{"not ip:port", []string{webDst, "web.shop:80"}, nil, codes.InvalidArgument,
			`discovery: subscribe "web.shop:80": not ip:port ("[v6]:port" for IPv6)`},
		{"IPv6 without brackets", []string{"fd00::1:80"}, nil, codes.InvalidArgument,
			`discovery: subscribe "fd00::1:80": not ip:port ("[v6]:port" for IPv6)`},
		{"port 0", []string{"10.0.0.1:0"}, nil, codes.InvalidArgument, `discovery: subscribe "10.0.0.1:0": port 0`},
		{"zone", []string{"[fe80::1%eth0]:80"}, nil, codes.InvalidArgument,
			`discovery: subscribe "[fe80::1%eth0]:80": an IPv6 zone has no meaning in a cluster`},
		{"bad unsubscribe", nil, []string{"nope"}, codes.InvalidArgument,
			`discovery: unsubscribe "nope": not ip:port ("[v6]:port" for IPv6)`},
		{"too many subscriptions", []string{webDst, lonelyDst, "10.0.0.1:80"}, nil, codes.ResourceExhausted,
			`discovery: too many subscriptions on one stream: subscribing to "10.0.0.1:80" would make 3, more than the 2 allowed`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := h.watch(t, h.ca, sidecarID)
			w.send(tt.subscribe, tt.unsub)
			err := w.end()
			if s := status.Convert(err); s.Code() != tt.code || s.Message() != tt.msg {
				t.Errorf("stream ended with %v %q\nwant %v %q", s.Code(), s.Message(), tt.code, tt.msg)
			}
		})
	}
	waitFor(t, "the streams to be gone", func() bool { return gauge(t, h.reg, "pillion_discovery_streams") == 0 })
	if got := gauge(t, h.reg, "pillion_discovery_subscriptions"); got != 0 {
		t.Errorf("subscriptions gauge = %v after every stream ended, want 0", got)
	}
}

// TestWatchOtherTrustDomain: a client whose SVID is of another trust
// domain is refused in the handshake and never reaches Watch, although
// the server holds that trust domain's bundle and could verify it.
func TestWatchOtherTrustDomain(t *testing.T) {
	h := newHarness(t, ServerConfig{})
	stream, err := h.open(t, h.other, "spiffe://other.example/ns/shop/sa/frontend")
	if err == nil {
		_ = stream.Send(&discoveryv1.WatchRequest{Subscribe: []string{webDst}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("stream ended with %v, want Unavailable (the server refused the handshake)", err)
	}
	if n := h.logs.FilterMessage("stream opened").Len(); n != 0 {
		t.Errorf("%d streams opened for a client of another trust domain", n)
	}
	// The same client with an SVID of discovery's trust domain is served.
	w := h.watch(t, h.ca, sidecarID)
	w.send([]string{webDst}, nil)
	h.checkState(t, w.next(), webDst)
	if n := h.logs.FilterMessage("stream opened").FilterField(zap.String("peer", sidecarID)).Len(); n != 1 {
		t.Errorf("%d streams opened for %s, want 1", n, sidecarID)
	}
}

// TestWatchNotSynced: until the index synced, streams are refused, so
// that no sidecar is told a destination is unknown because discovery has
// not listed it yet.
func TestWatchNotSynced(t *testing.T) {
	h := newBareHarness(t)
	var err error
	if h.idx, err = NewIndex(fake.NewClientset(), svidtest.SourceFor(t, h.ca, discoveryID), zap.NewNop(), prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	h.serve(t, ServerConfig{})
	w := h.watch(t, h.ca, sidecarID)
	w.send([]string{webDst}, nil)
	if s := status.Convert(w.end()); s.Code() != codes.Unavailable || s.Message() != ErrNotSynced.Error() {
		t.Errorf("stream ended with %v %q, want Unavailable %q", s.Code(), s.Message(), ErrNotSynced)
	}
}

// TestWatchClose: Close ends open streams with Unavailable, so that their
// clients go to another replica.
func TestWatchClose(t *testing.T) {
	h := newHarness(t, ServerConfig{})
	w := h.watch(t, h.ca, sidecarID)
	w.send([]string{webDst}, nil)
	w.next()
	h.srv.Close()
	if s := status.Convert(w.end()); s.Code() != codes.Unavailable || s.Message() != ErrShuttingDown.Error() {
		t.Errorf("stream ended with %v %q, want Unavailable %q", s.Code(), s.Message(), ErrShuttingDown)
	}
}
