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

// Validate checks that w's fields are what Kubernetes allows them to be,
// so that they can be label values: the name an object name, the
// namespace a namespace's (required), the app and version label values.
// The error names the field.
func (w *Workload) Validate() error {
	const (
		objectChars = "at most 253 of a-z, 0-9, '.', '-'"
		labelChars  = "at most 63 of A-Z, a-z, 0-9, '.', '_', '-'"
	)
	switch {
	case w.Name != "" && !objectName(w.Name):
		return fmt.Errorf("name: %q is not a Kubernetes object name (%s)", w.Name, objectChars)
	case w.Namespace == "" || !objectName(w.Namespace) || strings.Contains(w.Namespace, "."):
		return fmt.Errorf("namespace: %q is not a Kubernetes namespace (at most 63 of a-z, 0-9, '-')", w.Namespace)
	case !LabelValue(w.App):
		return fmt.Errorf("app: %q is not a label value (%s)", w.App, labelChars)
	case !LabelValue(w.Version):
		return fmt.Errorf("version: %q is not a label value (%s)", w.Version, labelChars)
	}
	return nil
}

// objectName reports whether s can name a Kubernetes object: 1 to 253 of
// [a-z0-9.-] (the API server checks the finer rules).
func objectName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// LabelValue reports whether s can be a Kubernetes label value, the empty
// one included: at most 63 of [A-Za-z0-9._-].
func LabelValue(s string) bool {
	if len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
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
