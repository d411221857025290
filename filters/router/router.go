// Package router is the terminal filter: it forwards each request to its
// upstream over the proxy's pools, choosing the protocol, and reports the
// upstream service time.
//
// Endpoint choice: each attempt picks its endpoint from the route of the
// request's destination (Env.Route): outbound, one of a Service's endpoints
// chosen by the balancer, or the destination itself; inbound, the
// application. The pick (address, meshed, identity) travels with the
// attempt to the pools' dial, and its outcome (latency to the response
// headers, failure) goes back to the balancer.
//
// Protocol choice: an upgrade request (WebSocket…) always goes over a
// dedicated HTTP/1.1 connection and becomes opaque after the switch.
// Outbound, a request to a meshed endpoint goes over pooled HTTP/2 to the
// peer's sidecar, an HTTP/1 request carrying its original protocol in
// OrigProtoHeader; any other request keeps the protocol it arrived in.
// Inbound, a request carrying OrigProtoHeader reaches the application in
// that protocol, and any other in the protocol it arrived in.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/bufpool"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Header names the router reads or writes on requests.
const (
	// OrigProtoHeader carries an HTTP/1 request's protocol across the
	// pooled HTTP/2 hop between sidecars (Linkerd's l5d-orig-proto).
	OrigProtoHeader = "pillion-orig-proto"
	// AttemptCountHeader tells the upstream which attempt this is, from 1
	// (Envoy's x-envoy-attempt-count). The inbound router keeps the count
	// the outbound sidecar sent, unless it retries itself.
	AttemptCountHeader = "pillion-attempt-count"
)

// The canonical forms of the names above: http.Header canonicalizes the
// name it is given, allocating when it is not canonical already, on every
// request.
var (
	origProtoKey    = http.CanonicalHeaderKey(OrigProtoHeader)
	attemptCountKey = http.CanonicalHeaderKey(AttemptCountHeader)
)

// DefaultUpstreamServiceTimeHeader is the header Envoy sets, so existing
// dashboards and scripts keep working.
const DefaultUpstreamServiceTimeHeader = "x-envoy-upstream-service-time"

// Config is the router's configuration. The zero value is the default:
// the upstream service time in DefaultUpstreamServiceTimeHeader, no
// Server-Timing.
type Config struct {
	// UpstreamServiceTimeHeader names the response header that carries the
	// upstream service time in whole milliseconds: from the request fully
	// sent upstream to the upstream's response headers (Envoy's x-envoy-
	// upstream-service-time semantics: absent when the response headers
	// came before the request was fully sent). Nil means the default; ""
	// turns it off.
	UpstreamServiceTimeHeader *string `json:"upstreamServiceTimeHeader"`
	// ServerTiming adds "Server-Timing: upstream;dur=<ms>", with
	// microsecond precision, to responses.
	ServerTiming bool `json:"serverTiming"`
}

var _ filters.Config = (*Config)(nil)

// Build validates c and returns the router. It needs env.Upstream.
func (c *Config) Build(env filters.Env) (filters.Filter, error) {
	r, err := New(*c, env)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Router forwards requests upstream. It is safe for concurrent use.
type Router struct {
	env          filters.Env
	header       string
	serverTiming bool
	rp           *httputil.ReverseProxy
}

var _ filters.Filter = (*Router)(nil)

// New returns a router for c.
func New(c Config, env filters.Env) (*Router, error) {
	header := DefaultUpstreamServiceTimeHeader
	if c.UpstreamServiceTimeHeader != nil {
		header = *c.UpstreamServiceTimeHeader
		if header != "" && !httpguts.ValidHeaderFieldName(header) {
			return nil, filters.Invalid("upstreamServiceTimeHeader", "%q is not a valid header name", header)
		}
	}
	if env.Upstream == nil {
		return nil, errors.New("router: no upstream pools")
	}
	rt := &Router{env: env, header: http.CanonicalHeaderKey(header), serverTiming: c.ServerTiming}
	rt.rp = &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      transport{env.Upstream},
		ModifyResponse: rt.modifyResponse,
		ErrorHandler:   rt.errorHandler,
		BufferPool:     new(bufferPool),
		ErrorLog:       zap.NewStdLog(env.Log.Named("router")),
	}
	return rt, nil
}

// ServeHTTP makes Router usable as a filter; it never calls next.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request, _ http.Handler) {
	rt.Forward(w, r)
}

// Forward sends r upstream, to an endpoint picked from its destination's
// route, and writes the response to w.
func (rt *Router) Forward(w http.ResponseWriter, r *http.Request) {
	info := filters.FromContext(r.Context())
	ep, done, err := rt.env.Route(info.Destination).Pick()
	if err != nil {
		info.StartAttempt()
		filters.Reply(w, r, http.StatusServiceUnavailable, filters.NoHealthyUpstream, oneLine(err))
		return
	}
	info.SetEndpoint(ep)
	st := &attempt{info: info, ep: ep, upstream: ep.Addr.String(), done: done, start: rt.env.Now(), now: rt.env.Now}
	st.proto, st.origProto = rt.protocol(r, info, ep)
	if info.Upgrade != "" {
		// The reverse proxy reads these to set up the upgrade.
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", info.Upgrade)
	}
	st.number = info.StartAttempt()
	defer flagAbort(r, info)
	ctx := context.WithValue(r.Context(), attemptKey{}, st)
	// The endpoint's latency is counted from the moment the request has a
	// connection: a dial and handshake are not the endpoint being slow.
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: st.gotConn})
	rt.rp.ServeHTTP(w, r.WithContext(ctx))
}

// flagAbort, deferred, records why a response was cut off after its
// headers were sent (ReverseProxy then panics with http.ErrAbortHandler,
// which carries on up to net/http, which resets the stream).
func flagAbort(r *http.Request, info *filters.Info) {
	p := recover()
	if p == nil {
		return
	}
	if p == http.ErrAbortHandler && info.Flags() == 0 {
		switch {
		case errors.Is(r.Context().Err(), context.DeadlineExceeded):
			info.AddFlags(filters.UpstreamTimeout)
		case r.Context().Err() != nil:
			info.AddFlags(filters.DownstreamDisconnect)
		default:
			info.AddFlags(filters.UpstreamReset)
		}
	}
	panic(p)
}

// protocol chooses how r travels to ep and what OrigProtoHeader says.
func (rt *Router) protocol(r *http.Request, info *filters.Info, ep upstream.Endpoint) (upstream.Protocol, string) {
	switch {
	case info.Upgrade != "":
		return upstream.HTTP1, ""
	case info.Direction == filters.Outbound && ep.Meshed:
		if r.ProtoMajor == 1 {
			return upstream.HTTP2, r.Proto
		}
		return upstream.HTTP2, ""
	case info.Direction == filters.Inbound && strings.HasPrefix(r.Header.Get(origProtoKey), "HTTP/1."):
		return upstream.HTTP1, ""
	case r.ProtoMajor == 2:
		return upstream.HTTP2, ""
	}
	return upstream.HTTP1, ""
}

// attempt is one trip upstream, carried in the outgoing request's context
// from Forward to the transport and the response hooks.
type attempt struct {
	info      *filters.Info
	ep        upstream.Endpoint
	upstream  string // ep.Addr, as the request's URL host
	done      upstream.Done
	reported  atomic.Bool // done was called
	start     time.Time
	connected atomic.Int64 // unix nanoseconds when it got its connection; 0 until then
	reused    atomic.Bool  // the connection had carried a request before
	now       func() time.Time
	proto     upstream.Protocol
	origProto string
	number    int
	sent      atomic.Int64          // unix nanoseconds when the request was fully sent; 0 until then
	body      timedBody             // the outgoing request's body, when it has one
	bodyErr   atomic.Pointer[error] // reading the client's body failed (not at its end)
}

type attemptKey struct{}

func attemptOf(ctx context.Context) *attempt { return ctx.Value(attemptKey{}).(*attempt) }

func (a *attempt) markSent(now time.Time) { a.sent.CompareAndSwap(0, now.UnixNano()) }

// gotConn restarts the attempt's latency when it has its connection.
func (a *attempt) gotConn(info httptrace.GotConnInfo) {
	if a.connected.CompareAndSwap(0, a.now().UnixNano()) {
		a.reused.Store(info.Reused)
	}
}

// report tells the route how the attempt went, once: at the response
// headers, or at the failure. The latency runs from the connection
// obtained, or from the attempt's start when it never got one; the first
// request on a new connection measures none (upstream.NoLatency).
func (a *attempt) report(now time.Time, failed bool) {
	if a.reported.CompareAndSwap(false, true) {
		start := a.start
		if c := a.connected.Load(); c != 0 {
			if !a.reused.Load() && !failed {
				a.done(upstream.NoLatency, false)
				return
			}
			start = time.Unix(0, c)
		}
		a.done(max(now.Sub(start), 0), failed)
	}
}

// forwarded are the headers an upstream proxy or ingress set and the
// application may rely on; ReverseProxy's Rewrite mode drops them, a
// transparent sidecar must not.
var forwarded = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (rt *Router) rewrite(pr *httputil.ProxyRequest) {
	a := attemptOf(pr.Out.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = a.upstream
	pr.Out.Host = pr.In.Host
	// ReverseProxy re-encodes a query it cannot parse (";", a bad %xx);
	// a proxy must send it as it came (signed URLs, for one).
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	// ReverseProxy cloned the request trailers before the body was read,
	// when they were still empty: the server fills in the inbound map when
	// the body ends, and the transport reads the outbound one only then.
	pr.Out.Trailer = pr.In.Trailer
	for _, h := range forwarded {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	pr.Out.Header.Del(origProtoKey)
	if a.origProto != "" {
		pr.Out.Header.Set(origProtoKey, a.origProto)
	}
	// The sidecar that retries says which attempt this is: outbound, or
	// inbound when the peer did not say (a caller outside the mesh).
	if a.info.Direction == filters.Outbound || pr.Out.Header.Get(attemptCountKey) == "" || a.number > 1 {
		pr.Out.Header.Set(attemptCountKey, strconv.Itoa(a.number))
	}
	if pr.Out.Body == nil || pr.Out.Body == http.NoBody {
		a.markSent(rt.env.Now())
		return
	}
	// The attempt's own: one trip upstream has one request body.
	a.body = timedBody{ReadCloser: pr.Out.Body, a: a, now: rt.env.Now}
	pr.Out.Body = &a.body
}

func (rt *Router) modifyResponse(res *http.Response) error {
	a := attemptOf(res.Request.Context())
	now := rt.env.Now()
	a.report(now, res.StatusCode >= 500)
	sent := a.sent.Load()
	if sent == 0 {
		return nil // the request was still being sent: no service time, as in Envoy
	}
	d := max(now.Sub(time.Unix(0, sent)), 0)
	a.info.SetUpstreamTime(d)
	if rt.header != "" {
		res.Header.Set(rt.header, strconv.FormatInt(d.Milliseconds(), 10))
	}
	if rt.serverTiming {
		res.Header.Add("Server-Timing", fmt.Sprintf("upstream;dur=%.3f", float64(d.Microseconds())/1000))
	}
	return nil
}

func (rt *Router) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	info := filters.FromContext(r.Context())
	a := attemptOf(r.Context())
	if bodyErr := a.bodyErr.Load(); bodyErr != nil && r.Context().Err() == nil {
		// The client's body broke its own framing (a bad chunk): the
		// client's fault, not the endpoint's. What follows on the
		// connection cannot be told from the body any more: it is closed,
		// never read as the next request (RFC 9112 §6.3).
		a.report(rt.env.Now(), false)
		filters.Reply(w, r, http.StatusBadRequest, filters.DownstreamProtocolError, "downstream protocol error: "+oneLine(*bodyErr))
		return
	}
	// A client that went away says nothing of the endpoint; a time-out
	// does, as in Envoy's outlier detection.
	a.report(rt.env.Now(), !errors.Is(r.Context().Err(), context.Canceled))
	if ctxErr := r.Context().Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			filters.Reply(w, r, http.StatusGatewayTimeout, filters.UpstreamTimeout, "upstream request timeout")
			return
		}
		// The client went away: nobody to answer, and no response (not
		// even net/http's implicit 200) must look like one.
		info.AddFlags(filters.DownstreamDisconnect)
		panic(http.ErrAbortHandler)
	}
	var pe *upstream.Error
	if !errors.As(err, &pe) {
		// Not the pools': ReverseProxy refused the upstream's answer (a bad
		// upgrade response and the like).
		filters.Reply(w, r, http.StatusBadGateway, filters.UpstreamProtocolError, "upstream protocol error: "+oneLine(err))
		return
	}
	info.SetUpstreamFailure(pe.Kind)
	switch pe.Kind {
	case upstream.ConnectFailure, upstream.Refused:
		filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error: "+oneLine(pe.Err))
	case upstream.ProtocolError:
		filters.Reply(w, r, http.StatusBadGateway, filters.UpstreamProtocolError, "upstream protocol error: "+oneLine(pe.Err))
	default:
		filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamReset, "upstream reset before response headers: "+oneLine(pe.Err))
	}
}

// oneLine makes err fit in a header value.
func oneLine(err error) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, err.Error())
}

// transport hands each request to the pool its attempt chose.
type transport struct{ up filters.Upstream }

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	a := attemptOf(req.Context())
	return t.up.RoundTrip(req, a.ep, a.proto)
}

// timedBody notes when the request body was read to its end: the request
// was then fully handed to the connection.
type timedBody struct {
	io.ReadCloser
	a   *attempt
	now func() time.Time
}

// Complete passes on what the client's body says of its end (proxy/h2's
// CompleteBody): a body that has all arrived goes upstream with the
// request's headers, in one write.
func (b *timedBody) Complete() (int, bool) {
	if cb, ok := b.ReadCloser.(interface{ Complete() (int, bool) }); ok {
		return cb.Complete()
	}
	return 0, false
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.a.markSent(b.now())
	case err != nil && !errors.Is(err, http.ErrBodyReadAfterClose):
		// The client's body itself failed (read after the transport
		// closed it is the transport's business, not the client's). A
		// copy of its own: the address of err would move err to the heap
		// on every read.
		failed := err
		b.a.bodyErr.CompareAndSwap(nil, &failed)
	}
	return n, err
}

// bufferPool is a bufpool.Pool as httputil.ReverseProxy takes one: the
// router's own, for response bodies.
type bufferPool struct{ p bufpool.Pool }

func (b *bufferPool) Get() []byte { return b.p.Get()[:] }

// Put takes back a buffer Get returned (ReverseProxy gives back the slice
// it got); anything else is left to the garbage collector.
func (b *bufferPool) Put(buf []byte) {
	if len(buf) == bufpool.Size {
		b.p.Put((*[bufpool.Size]byte)(buf))
	}
}
