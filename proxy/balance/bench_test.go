package balance

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPick is a Pick and its Done, as each request makes them.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			bal := New(Config{}, nil, nil)
			bal.Update(ready(n))
			b.ReportAllocs()
			for b.Loop() {
				_, done, err := bal.Pick()
				if err != nil {
					b.Fatal(err)
				}
				done(time.Millisecond, false)
			}
		})
		b.Run(fmt.Sprintf("endpoints=%d/parallel", n), func(b *testing.B) {
			bal := New(Config{}, nil, nil)
			bal.Update(ready(n))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, done, err := bal.Pick()
					if err != nil {
						b.Error(err)
						return
					}
					done(time.Millisecond, false)
				}
			})
		})
	}
}
