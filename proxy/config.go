// Package proxy is the sidecar's data path: listeners on the capture ports,
// the original destination of each connection, and forwarding — outbound to
// where the application meant to go, inbound to the application at the
// connection's original destination (the pod's own IP) from 127.0.0.6
// (::6), so that a listener bound to localhost only stays private to the
// pod.
package proxy

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/proxy/pool"
	"github.com/pillionmesh/pillion/sidecar"
)

// Default values for Config (the capture ports' and the drain's are
// sidecar's: the injector fits the pod to them).
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultMaxConnections = 16384
	DefaultIdleTimeout    = time.Hour // Envoy's tcp_proxy default
	// DefaultSniffTimeout is how long a client may take to send enough
	// bytes to tell its protocol. Clients of client-first protocols send at
	// once, so this is only waited for by server-first protocols on ports
	// not declared opaque (each of their connections starts this much
	// later) and by clients slower than this (forwarded as opaque TCP: they
	// work, without the HTTP features). Why 100 ms: ARCHITECTURE.md,
	// "Detection, and why 100 ms".
	DefaultSniffTimeout = 100 * time.Millisecond
	// DefaultHeaderTimeout is how long a client may take to send an HTTP/1
	// request's headers once it started them. Clients in a cluster send
	// headers in one round trip; 10 s leaves a congested or paused client
	// thousands of times that, and is Linkerd's bound on a client's first
	// bytes (its protocol detection waits 10 s). Envoy has no default
	// (request_headers_timeout: off) and Go's net/http none either; the
	// sidecar had a minute. A client that sends headers a byte at a time
	// holds a connection at most this long, so to keep --max-connections
	// full it must open that many every 10 s, each one counted.
	DefaultHeaderTimeout = 10 * time.Second
	// MaxHeaderTimeout is below the hour a keep-alive connection may sit
	// idle between requests (downstreamIdleTimeout): a header time-out is
	// told from an idle one by being the shorter.
	MaxHeaderTimeout = 10 * time.Minute
)

// DefaultOpaquePorts returns the ports protocol detection skips by
// default: well-known server-first or non-HTTP protocols (SMTP, MySQL,
// Galera, PostgreSQL, Redis, Elasticsearch transport, memcached), the same
// list as Linkerd's default opaque ports, so their connections never wait
// for the sniff time-out.
func DefaultOpaquePorts() sidecar.PortSet {
	return sidecar.PortSet{Ports: []uint16{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}}
}

// Config is the proxy's validated configuration. Build it with Validate (or
// DefaultConfig); the zero value is not valid.
type Config struct {
	// OutboundPort and InboundPort are the ports iptables redirects captured
	// traffic to. The proxy listens on both, IPv4 and IPv6.
	OutboundPort, InboundPort uint16
	// DialTimeout bounds how long connecting upstream may take (the TCP
	// connect; an mTLS handshake to a peer sidecar has its own bound, as
	// has the wait for a handshake slot: mesh.go).
	DialTimeout time.Duration
	// MaxHandshakes bounds the mTLS handshakes in flight at once, both
	// directions; more wait in order. See DefaultMaxHandshakes.
	MaxHandshakes int
	// MaxConnections caps the connections being proxied at once, both
	// directions together; one more is accepted and reset at once.
	MaxConnections int
	// DrainPeriod is how long the listeners keep accepting once a drain
	// starts (Run's context ends, or Drain), readiness already failing:
	// peers that have not yet heard the pod is going keep connecting, and
	// are served. Inbound HTTP answers say Connection: close (HTTP/2: the
	// connection gets a graceful GOAWAY) so that clients move on; the
	// outbound side serves the application as usual. Zero closes the
	// listeners at once.
	DrainPeriod time.Duration
	// DrainTimeout bounds how long Run waits, once the listeners closed
	// (after DrainPeriod), for open connections to finish before it resets
	// them. Zero resets them at once.
	DrainTimeout time.Duration
	// IdleTimeout resets a connection on which no byte moved either way for
	// this long (also one half-closed by one side and forgotten by the
	// other). Zero means no limit.
	IdleTimeout time.Duration
	// SniffTimeout bounds protocol detection; see DefaultSniffTimeout.
	SniffTimeout time.Duration
	// HeaderTimeout bounds how long an HTTP/1 request's headers may take
	// to arrive once they started, both directions; a client that is slower is closed, counted and logged.
	// See DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// OpaquePorts are original destination ports whose connections skip
	// protocol detection and are forwarded as opaque TCP at once.
	OpaquePorts sidecar.PortSet
	// Pool sizes the upstream HTTP pools; its DialTimeout and Dial are
	// ignored (DialTimeout above applies). Zero fields mean pool's
	// defaults.
	Pool pool.Config
	// Identity is where the sidecar's SVID and trust bundle come from;
	// nil turns mTLS off (and with it the config's mesh networks and
	// STRICT mode, which need it). The caller closes it after Run.
	Identity Identity
	// Discovery answers what stands behind a destination (`pillion
	// discovery`'s client); nil forwards every destination as it is,
	// meshed by the config's mesh.networks. It needs Identity.
	Discovery Discovery
	// Balance tunes the per-destination balancers of discovered Services;
	// zero fields mean balance's defaults.
	Balance balance.Config
	// Registerer is where New registers the proxy's metrics (see
	// metrics.go); nil turns metrics off.
	Registerer prometheus.Registerer
	// Workload is the sidecar's own pod as Istio's metric labels name it
	// (istio.go); zero fields are written "unknown".
	Workload istiometrics.Workload
	// AccessLogText is where access log lines in Envoy's text format go
	// (the accesslog filter's format: envoy): the log's output, each line
	// in one Write, safe for concurrent use. Nil discards them.
	AccessLogText io.Writer
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		OutboundPort:   sidecar.DefaultOutboundPort,
		InboundPort:    sidecar.DefaultInboundPort,
		DialTimeout:    DefaultDialTimeout,
		MaxConnections: DefaultMaxConnections,
		MaxHandshakes:  DefaultMaxHandshakes,
		DrainPeriod:    sidecar.DefaultDrainPeriod,
		DrainTimeout:   sidecar.DefaultDrainTimeout,
		IdleTimeout:    DefaultIdleTimeout,
		SniffTimeout:   DefaultSniffTimeout,
		HeaderTimeout:  DefaultHeaderTimeout,
		OpaquePorts:    DefaultOpaquePorts(),
		Pool: pool.Config{
			MaxIdlePerEndpoint: pool.DefaultMaxIdlePerEndpoint,
			HTTP1IdleTimeout:   pool.DefaultHTTP1IdleTimeout,
			HTTP2IdleTimeout:   pool.DefaultHTTP2IdleTimeout,
			PingInterval:       pool.DefaultPingInterval,
		},
	}
}

// FieldError is the error Validate returns: Field names the Config field
// that is wrong by its Go name ("DialTimeout", "Pool.HTTP1IdleTimeout"),
// Err says why, so that a caller can name the field in its own terms (`pillion
// proxy` names the flag that sets it).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "proxy: " + e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// invalid returns a *FieldError for field; format and args say why.
func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Validate checks c and returns a *FieldError naming the first field that
// is wrong (a Workload field as "Workload.Name", and so on).
func (c Config) Validate() error {
	switch {
	case c.OutboundPort == 0:
		return invalid("OutboundPort", "must be 1-65535")
	case c.InboundPort == 0:
		return invalid("InboundPort", "must be 1-65535")
	case c.OutboundPort == c.InboundPort:
		return invalid("InboundPort", "%d is also the outbound port; they must differ", c.InboundPort)
	case c.DialTimeout <= 0:
		return invalid("DialTimeout", "%v: must be positive", c.DialTimeout)
	case c.MaxConnections <= 0:
		return invalid("MaxConnections", "%d: must be positive", c.MaxConnections)
	case c.MaxHandshakes <= 0:
		return invalid("MaxHandshakes", "%d: must be positive", c.MaxHandshakes)
	case c.DrainPeriod < 0:
		return invalid("DrainPeriod", "%v: must not be negative (0 closes the listeners at once)", c.DrainPeriod)
	case c.DrainTimeout < 0:
		return invalid("DrainTimeout", "%v: must not be negative", c.DrainTimeout)
	case c.IdleTimeout < 0:
		return invalid("IdleTimeout", "%v: must not be negative (0 means no limit)", c.IdleTimeout)
	case c.Pool.MaxConnsPerEndpoint < 0:
		return invalid("Pool.MaxConnsPerEndpoint", "%d: must not be negative (0 means no limit)", c.Pool.MaxConnsPerEndpoint)
	case c.Pool.HTTP1IdleTimeout < 0:
		return invalid("Pool.HTTP1IdleTimeout", "%v: must not be negative", c.Pool.HTTP1IdleTimeout)
	case c.Pool.HTTP2IdleTimeout < 0:
		return invalid("Pool.HTTP2IdleTimeout", "%v: must not be negative", c.Pool.HTTP2IdleTimeout)
	case c.Discovery != nil && c.Identity == nil:
		return invalid("Discovery", "discovery is reached in mTLS and %w", ErrNoIdentity)
	case c.Balance.Validate() != nil:
		return &FieldError{Field: "Balance", Err: c.Balance.Validate()}
	case c.SniffTimeout <= 0:
		return invalid("SniffTimeout", "%v: must be positive", c.SniffTimeout)
	case c.HeaderTimeout <= 0 || c.HeaderTimeout > MaxHeaderTimeout:
		return invalid("HeaderTimeout", "%v: must be positive and at most %v", c.HeaderTimeout, MaxHeaderTimeout)
	}
	if err := c.Workload.Validate(); err != nil {
		if we := (*istiometrics.FieldError)(nil); errors.As(err, &we) {
			return &FieldError{Field: "Workload." + we.Field, Err: we.Err}
		}
		return &FieldError{Field: "Workload", Err: err}
	}
	return nil
}
