// Package filters is the HTTP filter chain of the sidecar: the Filter
// interface, the per-request Info every filter can read, the response flags
// that say why the proxy answered itself, and the chain that runs filters in
// order and ends at a terminal handler (the router).
//
// Each built-in filter lives in its own folder below this one with its
// config type, its code and its tests. A filter's config type implements
// Config; the chain is built once from the config file and replaced whole
// on reload, so a Filter never sees its config change.
package filters

import (
	"io"
	"net/http"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Filter is one step of an HTTP filter chain.
//
// ServeHTTP handles r. It may answer r itself (see Reply) without calling
// next; change r's headers and call next; wrap w to see or change the
// response (a wrapper must implement Unwrap so that http.ResponseController
// still reaches Flush and Hijack); or call next more than once (retry), as
// long as only one attempt's response reaches w. The request's hop-by-hop
// headers are already gone when the first filter runs. A Filter is built
// once and used by many requests at once: it must be safe for concurrent
// use.
type Filter interface {
	ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler)
}

// Direction is the listener a request arrived on.
type Direction uint8

// The two directions of captured traffic.
const (
	Outbound Direction = iota // the application calling out
	Inbound                   // a peer calling the application
)

func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// Env is what a filter may use when it is built. The proxy fills it in
// once per direction; zero fields are documented where they matter.
type Env struct {
	Direction Direction
	// Log is the proxy's own log. Never nil.
	Log *zap.Logger
	// AccessLog is where access log lines go (the proxy's log, named
	// "access"); its level says whether they are written at all. Never
	// nil.
	AccessLog *zap.Logger
	// AccessLogText is where access log lines in a text format (Envoy's)
	// go: the proxy's log output, each line in one Write, never
	// interleaved with the log's own lines. Nil: the text formats are
	// refused when the filter is built.
	AccessLogText io.Writer
	// Now is the clock. Never nil.
	Now func() time.Time
	// Upstream sends requests on: the terminal router uses it. Nil in the
	// unit tests of other filters.
	Upstream Upstream
	// Route returns the route of a request's destination (Info.Destination):
	// outbound, a balancer over the endpoints discovery announced for it,
	// or the destination itself, meshed or not as the config says; inbound,
	// the application. The router picks an endpoint from it for each
	// attempt. Never nil.
	Route func(dst netip.AddrPort) upstream.Route
	// Workload is the sidecar's own workload as it tells peer sidecars
	// (proxy/istiometrics' Workload.Peer): the outbound router sends it
	// to meshed endpoints, for their Istio metrics' source_* labels. ""
	// sends nothing.
	Workload string
}

// Upstream sends a request to ep with the given protocol, on a pooled
// connection. It is the proxy's pools as the router sees them; errors are
// *upstream.Error.
type Upstream interface {
	RoundTrip(req *http.Request, ep upstream.Endpoint, proto upstream.Protocol) (*http.Response, error)
}

// Config is one filter's configuration as decoded from the config file.
// Build validates it and returns the filter; an invalid config is an error
// built with Invalid, naming the field relative to the filter ("burst"), so
// the loader can prefix where the filter sits in the file.
type Config interface {
	Build(env Env) (Filter, error)
}

// Registry maps a filter's name in the config file to a function returning
// a new, zero config of its type for the decoder to fill.
type Registry map[string]func() Config
