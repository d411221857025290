// Package upstream is the vocabulary shared by the filters, the router and
// the proxy's pools and balancers about where a request goes and how it
// failed there: the endpoint picked for a request (decided once, carried to
// the dial), the protocol it travels in, the route that picks endpoints,
// and the typed failures the retry filter branches on. It is a leaf: it
// imports nothing of pillion's, so that filters need not import the pools.
package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"
)

// Protocol is how a request travels to the upstream.
type Protocol uint8

// The protocols a pool speaks.
const (
	HTTP1 Protocol = iota // HTTP/1.1, one request per connection at a time
	HTTP2                 // HTTP/2 (h2c, or inside mTLS to a peer sidecar), multiplexed
)

func (p Protocol) String() string {
	if p == HTTP2 {
		return "HTTP/2"
	}
	return "HTTP/1.1"
}

// Service names the Kubernetes Service a destination belongs to, as
// discovery announced it; the zero value is "none known".
type Service struct {
	Namespace, Name string
}

// String is "name.namespace", or "" for the zero Service.
func (s Service) String() string {
	if s.Name == "" {
		return ""
	}
	return s.Name + "." + s.Namespace
}

// Endpoint is where one request or connection goes, decided once (by a
// Route) and carried unchanged to the dial: whether it is meshed and whom
// it must prove to be are never decided again on the way.
type Endpoint struct {
	// Addr is the endpoint's address.
	Addr netip.AddrPort
	// Meshed: a pillion sidecar serves Addr, so the connection is mTLS and
	// HTTP travels as pooled HTTP/2.
	Meshed bool
	// Identity is the SPIFFE ID the peer sidecar must present when Meshed;
	// "" accepts any SVID of our trust domain (a destination discovery
	// does not know, meshed by the config's mesh.networks).
	Identity string
	// Service is the Service the endpoint was picked for, if any.
	Service Service
	// Workload names the endpoint's pod, as discovery announced it, for
	// telemetry; nil when not known. It is shared and never changed.
	Workload *Workload
}

// Workload names a pod as Istio's telemetry labels do (discovery's
// workload.Names, with the pod's namespace); "" is not known.
type Workload struct {
	Name, Namespace, App, Version string
}

// Validate checks that every field of w can be a metric label's value
// (CheckValue) and that the namespace is set. The error names the field.
func (w *Workload) Validate() error {
	if w.Namespace == "" {
		return errors.New("namespace: required")
	}
	for _, f := range []struct{ name, v string }{{"name", w.Name}, {"namespace", w.Namespace}, {"app", w.App}, {"version", w.Version}} {
		if err := CheckValue(f.v); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// MaxValue bounds the length of a name or label value taken from outside
// (discovery, flags): a Kubernetes object name's.
const MaxValue = 253

// CheckValue says why s cannot be a metric label's value taken from
// outside: longer than MaxValue, not UTF-8, or holding a control
// character. Kubernetes names and label values always can.
func CheckValue(s string) error {
	switch {
	case len(s) > MaxValue:
		return fmt.Errorf("%d bytes: at most %d", len(s), MaxValue)
	case !utf8.ValidString(s):
		return fmt.Errorf("%q: not UTF-8", s)
	case strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }):
		return fmt.Errorf("%q: has a control character", s)
	}
	return nil
}

// Done reports the outcome of a request or connection to a picked
// endpoint: how long the endpoint took to answer (the response headers;
// for a connection, the connect), or NoLatency, and whether it failed (no
// connection, a reset, a 5xx). A Done must be called exactly once.
type Done func(latency time.Duration, failed bool)

// NoLatency is the latency of a Done whose attempt measured none of the
// endpoint's: the first request on a new connection, whose time is as much
// the connection's setup on both sides (the far sidecar's dial to its
// application, cold code paths) as the endpoint's speed.
const NoLatency time.Duration = -1

// Route picks the endpoint for each request or connection to one
// destination. Implementations are safe for concurrent use.
type Route interface {
	// Pick returns the endpoint and the Done to call with the outcome, or
	// an error wrapping ErrNoHealthyUpstream when no endpoint can take it.
	Pick() (Endpoint, Done, error)
}

// ErrNoHealthyUpstream: the route has no endpoint that may take a request
// (none ready, or the discovery answer named none or was not valid).
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Fixed is the Route of a destination served by one known endpoint: the
// original destination outbound, the application inbound.
type Fixed Endpoint

// Pick returns the endpoint itself.
func (f Fixed) Pick() (Endpoint, Done, error) { return Endpoint(f), nop, nil }

func nop(time.Duration, bool) {}

// Kind says what went wrong with an upstream request.
type Kind uint8

// The kinds of Error.
const (
	// ConnectFailure: no connection could be made; nothing was sent.
	ConnectFailure Kind = iota + 1
	// Reset: the connection or stream was closed or reset before the
	// response headers arrived; the request may have been processed.
	Reset
	// ProtocolError: the upstream's answer was not valid HTTP.
	ProtocolError
	// Refused: the HTTP/2 peer did not process the request (it refused
	// the stream, or a GOAWAY did not cover it) and its body could not be
	// sent again; a request without a body is sent again by the pool.
	Refused
)

func (k Kind) String() string {
	switch k {
	case ConnectFailure:
		return "connect failure"
	case Reset:
		return "reset"
	case ProtocolError:
		return "protocol error"
	case Refused:
		return "stream refused"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Error is a failed upstream request.
type Error struct {
	Kind     Kind
	Endpoint string
	Protocol Protocol
	Err      error
}

func (e *Error) Error() string {
	return fmt.Sprintf("pool: %s %s: %s: %v", e.Protocol, e.Endpoint, e.Kind, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
