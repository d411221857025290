package bufpool

import "testing"

// Taking a buffer and giving it back allocates nothing once the pool holds
// one: the point of the pool (a slice put back would be boxed each time).
func TestGetPutAllocationFree(t *testing.T) {
	var p Pool
	p.Put(p.Get())
	if n := testing.AllocsPerRun(1000, func() { p.Put(p.Get()) }); n != 0 {
		t.Fatalf("Get and Put allocate %v times per round", n)
	}
}
