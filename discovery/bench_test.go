package discovery

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	discv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// bigService is a Service with n meshed endpoints over slices of 100, as
// the EndpointSlice controller cuts them.
func bigService(n int) []runtime.Object {
	objs := []runtime.Object{service("shop", "big", []string{"10.96.1.1"}, svcPort("http", 80, 8080, "http"))}
	var s *discv1.EndpointSlice
	for i := range n {
		if i%100 == 0 {
			s = slice("shop", fmt.Sprintf("big-%d", i/100), "big", discv1.AddressTypeIPv4, []discv1.EndpointPort{slicePortOf("http", 8080)})
			objs = append(objs, s)
		}
		ip := fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)
		name := fmt.Sprintf("big-%d", i)
		s.Endpoints = append(s.Endpoints, endpoint(ip, "shop", name, "zone-a", ptr(true), ptr(true), ptr(false)))
		objs = append(objs, pod("shop", name, "big", true, ip))
	}
	return objs
}

// BenchmarkLookupService measures one answer for a Service of 1,000
// endpoints: what a stream pays per affected subscription and change.
func BenchmarkLookupService(b *testing.B) {
	idx, _ := testIndex(b, nil, bigService(1000)...)
	dst := netip.MustParseAddrPort("10.96.1.1:80")
	if d := idx.Lookup(dst); len(d.Endpoints) != 1000 {
		b.Fatalf("%d endpoints, want 1000", len(d.Endpoints))
	}
	b.ReportAllocs()
	for b.Loop() {
		idx.Lookup(dst)
	}
}

// BenchmarkFanout measures what one change to a Service of 1,000
// endpoints costs when 1,000 streams subscribe to it: the answer is
// invalidated, every holder is told, and each gets the new state (one
// computes it, the others share it).
func BenchmarkFanout(b *testing.B) {
	idx, _ := testIndex(b, nil, bigService(1000)...)
	srv, err := NewServer(idx, ServerConfig{}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	dst := netip.MustParseAddrPort("10.96.1.1:80")
	var held []*answer
	for range 1000 {
		held = append(held, srv.answers.acquire(dst, newStream(srv, nil)))
	}
	c := []topic{{topicService, "shop/big"}}
	b.ReportAllocs()
	for b.Loop() {
		srv.answers.invalidate(c, time.Now())
		for _, e := range held {
			srv.answers.get(e)
		}
	}
}

// BenchmarkEqual measures comparing two answers of 1,000 endpoints, what
// the shared answers save each stream.
func BenchmarkEqual(b *testing.B) {
	idx, _ := testIndex(b, nil, bigService(1000)...)
	dst := netip.MustParseAddrPort("10.96.1.1:80")
	x, y := idx.Lookup(dst), idx.Lookup(dst)
	b.ReportAllocs()
	for b.Loop() {
		if !proto.Equal(x, y) {
			b.Fatal("differ")
		}
	}
}
