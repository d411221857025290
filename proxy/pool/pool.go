// Package pool holds the sidecar's upstream HTTP connections: one pool of
// HTTP/1.1 keep-alive connections (one request at a time each) and one of
// HTTP/2 connections (many requests multiplexed on each, a new connection
// opened when one is full), both keyed by endpoint (ip:port). It builds on
// pillion's own clients: proxy/h1, which writes a request and reads its
// answer on the caller's goroutine and sends again a request whose reused
// connection the application had closed, when it can; and proxy/h2, which
// sends again a request the peer did not process when it can. This package
// adds the limits, the dialer, the connection counts and the typed errors.
// Why a pool per endpoint: ARCHITECTURE.md, "Per-endpoint pools and
// per-request balancing".
package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/h1"
	"github.com/pillionmesh/pillion/proxy/h2"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Defaults for Config.
const (
	// DefaultHTTP1IdleTimeout is shorter than the shortest keep-alive
	// time-out common among application servers (Node.js: 5 s), so that the
	// proxy closes an idle connection before the application does, not
	// while sending a request on it.
	DefaultHTTP1IdleTimeout = 4 * time.Second
	// DefaultHTTP2IdleTimeout closes pooled HTTP/2 connections nobody used
	// for this long; pillion's own HTTP/2 server keeps them far longer.
	DefaultHTTP2IdleTimeout = time.Minute
	// DefaultMaxIdlePerEndpoint is the idle HTTP/1.1 connections kept per
	// endpoint.
	DefaultMaxIdlePerEndpoint = 64
	// DefaultPingInterval is how long an HTTP/2 connection may be silent
	// before it is pinged to check the peer is still there.
	DefaultPingInterval = 30 * time.Second
)

// Config sizes the pools. The zero value of a field means its default,
// except MaxConnsPerEndpoint where zero means no limit.
type Config struct {
	// DialTimeout bounds connecting. Required.
	DialTimeout time.Duration
	// MaxConnsPerEndpoint caps HTTP/1.1 connections per endpoint, busy and
	// idle; a request beyond waits for one to be free (bounded by its
	// context). Zero: no cap.
	MaxConnsPerEndpoint int
	// MaxIdlePerEndpoint caps the idle HTTP/1.1 connections kept.
	MaxIdlePerEndpoint int
	// HTTP1IdleTimeout and HTTP2IdleTimeout close connections idle longer.
	HTTP1IdleTimeout, HTTP2IdleTimeout time.Duration
	// PingInterval: see DefaultPingInterval.
	PingInterval time.Duration
	// Dial connects to ep for a pool of proto; nil means a net.Dialer with
	// DialTimeout to ep.Addr. The connection it returns carries the pool's
	// protocol as is: the proxy wraps connections to peer sidecars
	// (ep.Meshed) in mTLS here, verifying ep.Identity.
	Dial func(ctx context.Context, ep upstream.Endpoint, proto upstream.Protocol) (net.Conn, error)
	// Buffers holds the buffers request bodies are copied through; nil
	// means the pools' own.
	Buffers *bufpool.Pool
}

func (c Config) withDefaults() Config {
	if c.MaxIdlePerEndpoint == 0 {
		c.MaxIdlePerEndpoint = DefaultMaxIdlePerEndpoint
	}
	if c.HTTP1IdleTimeout == 0 {
		c.HTTP1IdleTimeout = DefaultHTTP1IdleTimeout
	}
	if c.HTTP2IdleTimeout == 0 {
		c.HTTP2IdleTimeout = DefaultHTTP2IdleTimeout
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.Dial == nil {
		d := &net.Dialer{Timeout: c.DialTimeout}
		c.Dial = func(ctx context.Context, ep upstream.Endpoint, _ upstream.Protocol) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", ep.Addr.String())
		}
	}
	return c
}

// Pools is the HTTP/1.1 and the HTTP/2 pool. It is safe for concurrent use.
type Pools struct {
	h1    *h1.Transport
	h2    *h2.Transport
	conns *counter
	bufs  *bufpool.Pool // request bodies' copy buffers
	// endpoints holds the last Endpoint each address was asked for with,
	// by Addr.String() (the transports' key): the dial takes it from
	// here, so that what was decided for the request is what is dialled.
	endpoints sync.Map
}

// New returns empty pools; connections are made on demand.
func New(cfg Config) *Pools {
	cfg = cfg.withDefaults()
	p := &Pools{conns: newCounter(), bufs: cfg.Buffers}
	if p.bufs == nil {
		p.bufs = new(bufpool.Pool)
	}
	dial1 := p.dialer(cfg, upstream.HTTP1)
	p.h1 = &h1.Transport{
		Dial:                  func(ctx context.Context, addr string) (net.Conn, error) { return dial1(ctx, "tcp", addr) },
		MaxConnsPerHost:       cfg.MaxConnsPerEndpoint,
		MaxIdlePerHost:        cfg.MaxIdlePerEndpoint,
		IdleTimeout:           cfg.HTTP1IdleTimeout,
		ExpectContinueTimeout: time.Second,
		ReadBufferSize:        32 << 10,
		WriteBufferSize:       32 << 10,
	}
	dial := p.dialer(cfg, upstream.HTTP2)
	p.h2 = &h2.Transport{
		Dial:         func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) },
		IdleTimeout:  cfg.HTTP2IdleTimeout,
		PingInterval: cfg.PingInterval,
		PingTimeout:  cfg.PingInterval / 2,
	}
	return p
}

// RoundTrip sends req to ep with proto, on a pooled connection to ep.Addr
// (req.URL.Host must be ep.Addr). Connections are pooled by address: a
// connection dialled for an address serves every later request to it, so
// an Endpoint must say the same of an address (meshed, identity) for as
// long as its connections live. An error is a *upstream.Error, or the
// context's error when req's context ended first.
func (p *Pools) RoundTrip(req *http.Request, ep upstream.Endpoint, proto upstream.Protocol) (*http.Response, error) {
	if old, ok := p.endpoints.Load(req.URL.Host); !ok || old.(upstream.Endpoint) != ep {
		p.endpoints.Store(req.URL.Host, ep)
	}
	var rt http.RoundTripper = p.h1
	if proto == upstream.HTTP2 {
		rt = p.h2
	}
	// The endpoint's counts, found once: the entry stays in the map.
	e := p.conns.start(req.URL.Host, proto)
	res, err := rt.RoundTrip(req)
	if err != nil {
		p.conns.end(e)
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, classify(req.URL.Host, proto, err)
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		p.conns.end(e) // the body is the upgraded connection, which must stay an io.ReadWriteCloser
		return res, nil
	}
	res.Body = &countedBody{ReadCloser: res.Body, n: p.conns, e: e}
	return res, nil
}

// countedBody ends its request's count once, when the body is read to its
// end or closed: the request is no longer active.
type countedBody struct {
	io.ReadCloser
	once sync.Once
	n    *counter
	e    *EndpointConns
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done()
	}
	return n, err
}

func (b *countedBody) Close() error {
	b.done()
	return b.ReadCloser.Close()
}

func (b *countedBody) done() {
	b.once.Do(func() { b.n.end(b.e) })
}

// CloseIdle closes the idle connections of both pools.
func (p *Pools) CloseIdle() {
	p.h1.CloseIdleConnections()
	p.h2.CloseIdleConnections()
}

// Conns returns the open connections per endpoint and protocol.
func (p *Pools) Conns() []EndpointConns { return p.conns.snapshot() }

// dialer returns the dial function of the proto pool: cfg.Dial, counted,
// with its errors marked as connect failures.
func (p *Pools) dialer(cfg Config, proto upstream.Protocol) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		v, ok := p.endpoints.Load(addr)
		if !ok {
			return nil, &dialError{fmt.Errorf("pool: dial %s: no endpoint was asked for at this address", addr)}
		}
		c, err := cfg.Dial(ctx, v.(upstream.Endpoint), proto)
		if err != nil {
			p.conns.update(addr, proto, func(e *EndpointConns) { e.ConnectFailures++ })
			return nil, &dialError{err}
		}
		return p.conns.track(c, addr, proto, p.bufs), nil
	}
}

// dialError marks an error of the dialer, wherever the transports put it.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func classify(endpoint string, proto upstream.Protocol, err error) *upstream.Error {
	e := &upstream.Error{Kind: upstream.Reset, Endpoint: endpoint, Protocol: proto, Err: err}
	var de *dialError
	var se http2.StreamError
	var ce http2.ConnectionError
	var pe *h1.ProtocolError
	switch {
	case errors.As(err, &de):
		e.Kind, e.Err = upstream.ConnectFailure, de.err
	case errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream:
		e.Kind = upstream.Refused
	case errors.As(err, &se) && se.Code == http2.ErrCodeProtocol,
		errors.As(err, &ce) && http2.ErrCode(ce) == http2.ErrCodeProtocol,
		errors.As(err, &pe):
		e.Kind = upstream.ProtocolError
	}
	return e
}
