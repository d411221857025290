// Package bufpool holds copy buffers for their owner to reuse: a proxy
// copies bodies and streams through 32 KiB buffers (io.Copy's size), and
// a buffer taken per copy would be garbage per request. Each owner (the
// proxy server for its relays and pools, a router for its responses) has
// its own Pool; there is no package-wide one.
package bufpool

import "sync"

// Size is the size of a buffer.
const Size = 32 << 10

// Pool reuses buffers of Size bytes. It holds pointers to arrays, which
// go into the pool's interface without an allocation (a slice's header
// would be boxed on every Put). The zero value is ready to use, and a Pool
// is safe for concurrent use.
type Pool struct{ p sync.Pool }

// Get returns a buffer, reused or new.
func (p *Pool) Get() *[Size]byte {
	if b, ok := p.p.Get().(*[Size]byte); ok {
		return b
	}
	return new([Size]byte)
}

// Put takes back a buffer Get returned.
func (p *Pool) Put(b *[Size]byte) { p.p.Put(b) }
