package filters

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Info is what the proxy knows about one request beyond the request itself.
// The proxy puts one in every request's context before the first filter
// runs; filters read it with FromContext. The fixed fields are set before
// the chain runs and must not be changed; the rest change through methods
// and are safe for concurrent use.
type Info struct {
	Direction Direction
	// Start is when the proxy received the request's headers.
	Start time.Time
	// Destination is the connection's original destination, as the
	// application (outbound) or the peer (inbound) addressed it.
	Destination netip.AddrPort
	// Source is the downstream peer's address.
	Source netip.AddrPort
	// Peer is the caller's SPIFFE ID when it is known (inbound, over
	// mTLS), else "".
	Peer string
	// Upgrade is the protocol the client asked to switch to (Upgrade
	// header, e.g. "websocket"), "" when none. The router keeps the
	// Connection and Upgrade headers of such a request.
	Upgrade string

	mu           sync.Mutex
	flags        Flags
	upstreamTime time.Duration
	haveUpstream bool
	attempts     int
	failure      upstream.Kind
	endpoint     upstream.Endpoint
}

type infoKey struct{}

// NewContext returns ctx carrying info.
func NewContext(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

// FromContext returns the Info in ctx. A request that did not come through
// the proxy (a unit test's) gets a fresh, empty Info, never nil; changes to
// it are then lost.
func FromContext(ctx context.Context) *Info {
	if i, ok := ctx.Value(infoKey{}).(*Info); ok {
		return i
	}
	return &Info{}
}

// AddFlags records why the proxy answered or cut the request short.
func (i *Info) AddFlags(f Flags) {
	i.mu.Lock()
	i.flags |= f
	i.mu.Unlock()
}

// ClearFlags forgets the flags recorded so far (a retry starting a new
// attempt does this).
func (i *Info) ClearFlags() {
	i.mu.Lock()
	i.flags = 0
	i.mu.Unlock()
}

// Flags returns the flags recorded so far.
func (i *Info) Flags() Flags {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.flags
}

// SetUpstreamFailure records how the current attempt at the upstream
// failed; zero clears it.
func (i *Info) SetUpstreamFailure(k upstream.Kind) {
	i.mu.Lock()
	i.failure = k
	i.mu.Unlock()
}

// UpstreamFailure returns how the current attempt failed, zero if it did
// not (or got no further than the filters).
func (i *Info) UpstreamFailure() upstream.Kind {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.failure
}

// SetUpstreamTime records the upstream service time of the attempt whose
// response is forwarded: from the request fully sent to the upstream's
// response headers.
func (i *Info) SetUpstreamTime(d time.Duration) {
	i.mu.Lock()
	i.upstreamTime, i.haveUpstream = d, true
	i.mu.Unlock()
}

// UpstreamTime returns the recorded upstream service time; ok is false when
// no upstream response headers were received (or the request was still
// being sent when they were).
func (i *Info) UpstreamTime() (d time.Duration, ok bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.upstreamTime, i.haveUpstream
}

// StartAttempt counts one more attempt at the upstream and returns the
// count. It forgets the upstream time and failure of the attempt before,
// so that they always describe the attempt whose response is forwarded.
func (i *Info) StartAttempt() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.attempts++
	i.upstreamTime, i.haveUpstream, i.failure = 0, false, 0
	return i.attempts
}

// SetEndpoint records the endpoint the current attempt was sent to.
func (i *Info) SetEndpoint(ep upstream.Endpoint) {
	i.mu.Lock()
	i.endpoint = ep
	i.mu.Unlock()
}

// Endpoint returns the endpoint the last attempt was sent to: its address
// (an endpoint of the destination's Service, the destination itself, or
// the application inbound), whether it was meshed, and the Service; the
// zero Endpoint when no attempt was made.
func (i *Info) Endpoint() upstream.Endpoint {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.endpoint
}

// Attempts returns how many times the request was sent upstream.
func (i *Info) Attempts() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.attempts
}
