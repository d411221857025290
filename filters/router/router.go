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
	"net/url"
	"strconv"
	"strings"
	"sync"
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
	// ServiceHeader tells the peer sidecar the Service ("name.namespace")
	// discovery picked its endpoint for, which the inbound side cannot
	// know and Istio's destination_service label names (proxy/istio.go
	// reads and removes it).
	ServiceHeader = "pillion-service"
	// WorkloadHeader tells the peer sidecar the caller's workload (Env.Workload),
	// which the inbound side cannot know from the SPIFFE ID alone and
	// Istio's source_workload, source_app… name (Istio's metadata
	// exchange; proxy/istio.go reads and removes it).
	WorkloadHeader = "pillion-workload"
)

// The canonical forms of the names above: http.Header canonicalizes the
// name it is given, allocating when it is not canonical already, on every
// request.
var (
	origProtoKey    = http.CanonicalHeaderKey(OrigProtoHeader)
	attemptCountKey = http.CanonicalHeaderKey(AttemptCountHeader)
	serviceKey      = http.CanonicalHeaderKey(ServiceHeader)
	workloadKey     = http.CanonicalHeaderKey(WorkloadHeader)
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
	log          *zap.Logger
	bufs         bufpool.Pool // response bodies' copy buffers
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
	return &Router{env: env, header: http.CanonicalHeaderKey(header), serverTiming: c.ServerTiming, log: env.Log.Named("router")}, nil
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
	a := &attempt{w: w, info: info, ep: ep, upstream: ep.Addr.String(), done: done, start: rt.env.Now(), now: rt.env.Now}
	a.proto, a.origProto = rt.protocol(r, info, ep)
	a.number = info.StartAttempt()
	defer flagAbort(r, info)
	rt.forward(w, rt.outgoing(r, a), a)
}

// flagAbort, deferred, records why a response was cut off after its
// headers were sent (forward then panics with http.ErrAbortHandler, which
// carries on up to the server, which resets the stream).
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

// attempt is one trip upstream.
type attempt struct {
	w         http.ResponseWriter // the client's
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
	url       url.URL               // the outgoing request's
	trace     httptrace.ClientTrace // the outgoing request's
	// respMu orders the informational responses the transport passes on
	// (from its own goroutine) before the final one; headersDone is set
	// under it once the final response is in.
	respMu      sync.Mutex
	headersDone bool
	// vals holds the values outgoing sets, saving an allocation each.
	vals  [5]string
	nvals int
}

// set sets h's canonical key k to v, in a.vals.
func (a *attempt) set(h http.Header, k, v string) {
	i := a.nvals
	a.vals[i], a.nvals = v, i+1
	h[k] = a.vals[i : i+1 : i+1]
}

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

// outgoing makes the request of attempt a from r: a shallow copy to the
// endpoint a picked, sharing r's header, which it changes in place. The
// proxy removed the hop-by-hop headers from it on arrival; the retry
// filter gives each attempt but the last a copy of its own, and the last
// runs when no other does. The body's close is not passed on: r's body
// belongs to the server.
func (rt *Router) outgoing(r *http.Request, a *attempt) *http.Request {
	a.trace = httptrace.ClientTrace{GotConn: a.gotConn, Got1xxResponse: a.got1xx}
	out := r.WithContext(httptrace.WithClientTrace(r.Context(), &a.trace))
	a.url = *r.URL
	a.url.Scheme, a.url.Host = "http", a.upstream
	out.URL, out.RequestURI, out.Close = &a.url, "", false
	h := out.Header
	if a.info.Upgrade != "" {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", a.info.Upgrade)
	}
	if _, ok := h["User-Agent"]; !ok {
		a.set(h, "User-Agent", "") // none, rather than the transport's own
	}
	delete(h, origProtoKey)
	if a.origProto != "" {
		a.set(h, origProtoKey, a.origProto)
	}
	delete(h, serviceKey)
	delete(h, workloadKey)
	if a.info.Direction == filters.Outbound && a.ep.Meshed {
		if a.ep.Service.Name != "" {
			a.set(h, serviceKey, a.ep.Service.String())
		}
		if rt.env.Workload != "" {
			a.set(h, workloadKey, rt.env.Workload)
		}
	}
	// The sidecar that retries says which attempt this is: outbound, or
	// inbound when the peer did not say (a caller outside the mesh).
	if a.info.Direction == filters.Outbound || h.Get(attemptCountKey) == "" || a.number > 1 {
		a.set(h, attemptCountKey, strconv.Itoa(a.number))
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		// No body: net/http's transport may then send the request again
		// on a new connection when a pooled one was closed under it.
		out.Body = nil
		a.markSent(rt.env.Now())
		return out
	}
	// The attempt's own: one trip upstream has one request body.
	a.body = timedBody{r: r.Body, a: a, now: rt.env.Now}
	out.Body = &a.body
	return out
}

// upstreamTime reports the attempt's outcome and puts the upstream service
// time on the response's header.
func (rt *Router) upstreamTime(res *http.Response, a *attempt) {
	now := rt.env.Now()
	a.report(now, res.StatusCode >= 500)
	sent := a.sent.Load()
	if sent == 0 {
		return // the request was still being sent: no service time, as in Envoy
	}
	d := max(now.Sub(time.Unix(0, sent)), 0)
	a.info.SetUpstreamTime(d)
	if rt.header != "" {
		res.Header.Set(rt.header, strconv.FormatInt(d.Milliseconds(), 10))
	}
	if rt.serverTiming {
		res.Header.Add("Server-Timing", fmt.Sprintf("upstream;dur=%.3f", float64(d.Microseconds())/1000))
	}
}

// fail answers the request of attempt a, which failed with err before a
// response came.
func (rt *Router) fail(w http.ResponseWriter, r *http.Request, a *attempt, err error) {
	info := a.info
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
		// Not the pools': forward refused the upstream's answer (a bad
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

// timedBody notes when the request body was read to its end: the request
// was then fully handed to the connection.
type timedBody struct {
	r   io.ReadCloser // the client's
	a   *attempt
	now func() time.Time
}

// Close leaves the client's body to the server that gave it.
func (b *timedBody) Close() error { return nil }

// Complete passes on what the client's body says of its end (proxy/h2's
// CompleteBody): a body that has all arrived goes upstream with the
// request's headers, in one write.
func (b *timedBody) Complete() (int, bool) {
	if cb, ok := b.r.(interface{ Complete() (int, bool) }); ok {
		return cb.Complete()
	}
	return 0, false
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
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
