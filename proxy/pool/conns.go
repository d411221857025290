package pool

import (
	"cmp"
	"net"
	"slices"
	"sync"
)

// EndpointConns is what a pool did with one endpoint: its connections and
// requests now and since the pool started.
type EndpointConns struct {
	Endpoint string
	Protocol Protocol
	// Open connections now; Total ever opened; ConnectFailures dials that
	// failed.
	Open, Total, ConnectFailures int
	// ActiveRequests being sent or answered now; TotalRequests ever sent.
	ActiveRequests, TotalRequests int
}

type connKey struct {
	endpoint string
	proto    Protocol
}

// counter counts connections and requests per endpoint and protocol. An
// endpoint's entry is kept once made, like Envoy's host stats.
type counter struct {
	mu sync.Mutex
	by map[connKey]*EndpointConns
}

func newCounter() *counter { return &counter{by: make(map[connKey]*EndpointConns)} }

// entry returns k's counts; n.mu must be held.
func (n *counter) entry(k connKey) *EndpointConns {
	e := n.by[k]
	if e == nil {
		e = &EndpointConns{Endpoint: k.endpoint, Protocol: k.proto}
		n.by[k] = e
	}
	return e
}

// update changes k's counts under the lock.
func (n *counter) update(endpoint string, proto Protocol, f func(*EndpointConns)) {
	n.mu.Lock()
	f(n.entry(connKey{endpoint, proto}))
	n.mu.Unlock()
}

// track counts c until it is closed.
func (n *counter) track(c net.Conn, endpoint string, proto Protocol) net.Conn {
	n.update(endpoint, proto, func(e *EndpointConns) { e.Open++; e.Total++ })
	return &countedConn{Conn: c, release: func() {
		n.update(endpoint, proto, func(e *EndpointConns) { e.Open-- })
	}}
}

func (n *counter) snapshot() []EndpointConns {
	n.mu.Lock()
	out := make([]EndpointConns, 0, len(n.by))
	for _, e := range n.by {
		out = append(out, *e)
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
