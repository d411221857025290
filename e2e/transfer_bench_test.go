package e2e

import (
	"testing"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// BenchmarkTransfer256MiB streams 256 MiB from pod a to a sink, through both
// sidecars (a's outbound, b's inbound) and on the direct path (pod c, which
// a's capture excludes), in the same namespaces and the same run. Compare
// the two with benchstat or by their medians:
//
//	go test ./e2e -run '^$' -bench Transfer256MiB -benchtime 1x -count 5
func BenchmarkTransfer256MiB(b *testing.B) {
	m := newMesh(b)
	const size = 256 << 20
	for _, path := range []struct {
		name string
		addr string
	}{
		{"direct", hostPort(m.c.IPv4, 8081)},
		{"sidecars", hostPort(m.b.Pod.IPv4, 8081)},
	} {
		b.Run(path.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				got, want, err := meshtest.Send(m.a.Pod, path.addr, size)
				if err != nil {
					b.Fatal(err)
				}
				if got != want {
					b.Fatalf("sink answered %q, want %q", got, want)
				}
			}
		})
	}
}
