package pool

import (
	"cmp"
	"net"
	"slices"
	"sync"
)

// EndpointConns is how many connections a pool has open to one endpoint.
type EndpointConns struct {
	Endpoint string
	Protocol Protocol
	Open     int
}

type connKey struct {
	endpoint string
	proto    Protocol
}

// counter counts open connections per endpoint and protocol.
type counter struct {
	mu   sync.Mutex
	open map[connKey]int
}

func newCounter() *counter { return &counter{open: make(map[connKey]int)} }

// track counts c until it is closed.
func (n *counter) track(c net.Conn, endpoint string, proto Protocol) net.Conn {
	k := connKey{endpoint, proto}
	n.mu.Lock()
	n.open[k]++
	n.mu.Unlock()
	return &countedConn{Conn: c, release: func() {
		n.mu.Lock()
		if n.open[k]--; n.open[k] == 0 {
			delete(n.open, k)
		}
		n.mu.Unlock()
	}}
}

func (n *counter) snapshot() []EndpointConns {
	n.mu.Lock()
	out := make([]EndpointConns, 0, len(n.open))
	for k, v := range n.open {
		out = append(out, EndpointConns{Endpoint: k.endpoint, Protocol: k.proto, Open: v})
	}
	n.mu.Unlock()
	slices.SortFunc(out, func(a, b EndpointConns) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Protocol, b.Protocol))
	})
	return out
}

// countedConn releases its count once, on the first Close.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
