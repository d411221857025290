package proxy

import (
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// BenchmarkIdleConnection measures what an idle opaque TCP connection holds
// in the sidecars of each topology once it is set up: the Go heap and
// stacks in use per connection, over 1,000 connections that sent one byte
// and then wait, less the same connections made to the application
// directly (the client's and the application's own share, in this same
// process). It reports B/conn, the stacks' share and goroutines per
// connection; b.N is not used. IDLE_HEAP=file writes the heap profile of
// the mesh topology's connections while they are held:
//
//	IDLE_HEAP=/tmp/idle.heap go test -run '^$' -bench IdleConnection -benchtime 1x -memprofilerate 512 -o /tmp/proxy.test ./proxy
//	go tool pprof -sample_index=inuse_space -top /tmp/proxy.test /tmp/idle.heap
func BenchmarkIdleConnection(b *testing.B) {
	const conns = 1000
	for _, topo := range append([]benchTopology{{"direct", func(_ *testing.B, app netip.AddrPort) netip.AddrPort { return app }}}, benchTopologies...) {
		b.Run(topo.name, func(b *testing.B) {
			front := topo.start(b, loopbackServer(b, func(c net.Conn) {
				_ = c.SetDeadline(time.Time{})
				_, _ = io.Copy(io.Discard, c)
			}))
			before, gBefore := inUse(), runtime.NumGoroutine()
			var m0 runtime.MemStats
			runtime.ReadMemStats(&m0)
			var held []*net.TCPConn
			for range conns {
				c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(front))
				if err != nil {
					b.Fatal(err)
				}
				held = append(held, c)
				if _, err := c.Write([]byte{0}); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(2 * time.Second) // every connection through, detected, relayed
			for b.Loop() {
			}
			b.ReportMetric(float64(inUse()-before)/conns, "B/conn")
			var m1 runtime.MemStats
			runtime.ReadMemStats(&m1)
			b.ReportMetric(float64(int64(m1.StackInuse)-int64(m0.StackInuse))/conns, "stackB/conn")
			b.ReportMetric(float64(runtime.NumGoroutine()-gBefore)/conns, "goroutines/conn")
			if f := os.Getenv("IDLE_HEAP"); f != "" && topo.name == "mesh" {
				runtime.GC()
				w, err := os.Create(f)
				if err != nil {
					b.Fatal(err)
				}
				if err := pprof.WriteHeapProfile(w); err != nil {
					b.Fatal(err)
				}
				w.Close()
			}
			for _, c := range held {
				c.Close()
			}
		})
	}
}

// inUse is the heap and the goroutine stacks in use, after a collection.
func inUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
