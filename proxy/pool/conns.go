package pool

import (
	"cmp"
	"io"
	"net"
	"slices"
	"sync"

	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// EndpointConns is what a pool did with one endpoint: its connections and
// requests now and since the pool started.
type EndpointConns struct {
	Endpoint string
	Protocol upstream.Protocol
	// Open connections now; Total ever opened; ConnectFailures dials that
	// failed.
	Open, Total, ConnectFailures int
	// ActiveRequests being sent or answered now; TotalRequests ever sent.
	ActiveRequests, TotalRequests int
}

type connKey struct {
	endpoint string
	proto    upstream.Protocol
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
func (n *counter) update(endpoint string, proto upstream.Protocol, f func(*EndpointConns)) {
	n.mu.Lock()
	f(n.entry(connKey{endpoint, proto}))
	n.mu.Unlock()
}

// start counts one more request to endpoint and returns its entry, for
// end.
func (n *counter) start(endpoint string, proto upstream.Protocol) *EndpointConns {
	n.mu.Lock()
	e := n.entry(connKey{endpoint, proto})
	e.ActiveRequests++
	e.TotalRequests++
	n.mu.Unlock()
	return e
}

// end counts the request start counted as no longer active.
func (n *counter) end(e *EndpointConns) {
	n.mu.Lock()
	e.ActiveRequests--
	n.mu.Unlock()
}

// track counts c until it is closed.
func (n *counter) track(c net.Conn, endpoint string, proto upstream.Protocol, bufs *bufpool.Pool) net.Conn {
	n.update(endpoint, proto, func(e *EndpointConns) { e.Open++; e.Total++ })
	return &countedConn{Conn: c, bufs: bufs, release: func() {
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
	bufs    *bufpool.Pool
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// NetConn returns the connection counted, as tls.Conn's NetConn does: the
// HTTP/1.1 client peeks at its socket before it reuses it.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

// ReadFrom copies r to the connection through a buffer of the pools',
// for an io.Copy onto the connection: without it io.Copy would allocate a
// buffer of up to 32 KiB per copy, the wrapper hiding the wrapped
// connection's own ReadFrom (which would allocate one too: a body is not a
// file or a socket the kernel could splice from). proxy/h1 does not copy
// this way: it writes requests through buffers of its own.
func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	buf := c.bufs.Get()
	defer c.bufs.Put(buf)
	return io.CopyBuffer((*plainConn)(c), r, buf[:])
}

// plainConn is a countedConn without ReadFrom, so that io.CopyBuffer
// writes through the buffer it is given (net.Conn's Write is promoted).
type plainConn countedConn
