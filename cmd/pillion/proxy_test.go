package main

import (
	"errors"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/proxy"
)

// TestProxyUserError: every proxy.Config field a flag sets is named by its
// flag when Validate refuses it, and a missing identity says which flags
// give one.
func TestProxyUserError(t *testing.T) {
	mod := func(f func(*proxy.Config)) proxy.Config { c := proxy.DefaultConfig(); f(&c); return c }
	for _, tt := range []struct {
		cfg  proxy.Config
		want string
	}{
		{mod(func(c *proxy.Config) { c.OutboundPort = 0 }), "--outbound-port: must be 1-65535"},
		{mod(func(c *proxy.Config) { c.MaxHandshakes = 0 }), "--max-handshakes: 0: must be positive"},
		{mod(func(c *proxy.Config) { c.IdleTimeout = -time.Second }), "--idle-timeout: -1s: must not be negative (0 means no limit)"},
		{mod(func(c *proxy.Config) { c.Pool.MaxConnsPerEndpoint = -1 }), "--max-conns-per-endpoint: -1: must not be negative (0 means no limit)"},
		{mod(func(c *proxy.Config) { c.Pool.HTTP1IdleTimeout = -time.Second }), "--http1-idle-timeout: -1s: must not be negative"},
		{mod(func(c *proxy.Config) { c.Pool.HTTP2IdleTimeout = -time.Second }), "--http2-idle-timeout: -1s: must not be negative"},
	} {
		if got := proxyUserError(tt.cfg.Validate()); got == nil || got.Error() != tt.want {
			t.Errorf("got %v, want %q", got, tt.want)
		}
	}
	err := proxyUserError(&proxy.FieldError{Field: "Discovery", Err: proxy.ErrNoIdentity})
	const want = "--discovery-address: needs an identity: start the proxy with --spiffe-socket (or SPIFFE_ENDPOINT_SOCKET) or --svid-cert, --svid-key and --svid-bundle"
	if err.Error() != want || !errors.Is(err, proxy.ErrNoIdentity) {
		t.Errorf("got %v, want %q", err, want)
	}
}
