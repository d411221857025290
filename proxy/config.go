// Package proxy is the sidecar's data path: listeners on the capture ports,
// the original destination of each connection, and forwarding — outbound to
// where the application meant to go, inbound to the application on loopback.
package proxy

import (
	"fmt"
	"time"

	"github.com/pillionmesh/pillion/redirect"
)

// Default values for Config; the ports are the ones `pillion init`
// redirects to by default.
const (
	DefaultOutboundPort   = redirect.DefaultOutboundPort
	DefaultInboundPort    = redirect.DefaultInboundPort
	DefaultDialTimeout    = 5 * time.Second
	DefaultMaxConnections = 16384
	DefaultDrainTimeout   = 5 * time.Second
	DefaultIdleTimeout    = time.Hour // Envoy's tcp_proxy default
)

// Config is the proxy's validated configuration. Build it with Validate (or
// DefaultConfig); the zero value is not valid.
type Config struct {
	// OutboundPort and InboundPort are the ports iptables redirects captured
	// traffic to. The proxy listens on both, IPv4 and IPv6.
	OutboundPort, InboundPort uint16
	// DialTimeout bounds how long connecting upstream may take.
	DialTimeout time.Duration
	// MaxConnections caps the connections being proxied at once, both
	// directions together; one more is accepted and reset at once.
	MaxConnections int
	// DrainTimeout bounds how long Run waits, once its context ends, for
	// open connections to finish before it resets them. Zero resets them at
	// once.
	DrainTimeout time.Duration
	// IdleTimeout resets a connection on which no byte moved either way for
	// this long (also one half-closed by one side and forgotten by the
	// other). Zero means no limit.
	IdleTimeout time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		OutboundPort:   DefaultOutboundPort,
		InboundPort:    DefaultInboundPort,
		DialTimeout:    DefaultDialTimeout,
		MaxConnections: DefaultMaxConnections,
		DrainTimeout:   DefaultDrainTimeout,
		IdleTimeout:    DefaultIdleTimeout,
	}
}

// Validate checks c and returns an error naming the first field that is
// wrong. The names are the flags of `pillion proxy`.
func (c Config) Validate() error {
	switch {
	case c.OutboundPort == 0:
		return fmt.Errorf("--outbound-port: must be 1-65535")
	case c.InboundPort == 0:
		return fmt.Errorf("--inbound-port: must be 1-65535")
	case c.OutboundPort == c.InboundPort:
		return fmt.Errorf("--inbound-port: %d is also the outbound port; they must differ", c.InboundPort)
	case c.DialTimeout <= 0:
		return fmt.Errorf("--dial-timeout: %v: must be positive", c.DialTimeout)
	case c.MaxConnections <= 0:
		return fmt.Errorf("--max-connections: %d: must be positive", c.MaxConnections)
	case c.DrainTimeout < 0:
		return fmt.Errorf("--drain-timeout: %v: must not be negative", c.DrainTimeout)
	case c.IdleTimeout < 0:
		return fmt.Errorf("--idle-timeout: %v: must not be negative (0 means no limit)", c.IdleTimeout)
	}
	return nil
}
