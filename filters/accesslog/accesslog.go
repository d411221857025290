// Package accesslog is the filter that writes one line per request to the
// proxy's access log: by default a JSON line with Envoy's facts under
// snake_case names (what was asked, how it was answered, the response
// flags, the times and sizes, who was talking to whom, the request ID), or
// Envoy's default access log format, text that the tools which parse
// Envoy's and Istio's logs read unchanged.
package accesslog

import (
	"io"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/filters"
)

// Config is the access log filter's configuration:
//
//	accesslog: {}                # JSON lines, the default
//	accesslog: {format: envoy}   # Envoy's default text format
type Config struct {
	// Format is "json" (or "") or "envoy"; see Format.
	Format string `json:"format,omitempty"`
}

var _ filters.Config = (*Config)(nil)

// Format is how the access log writes a line.
type Format uint8

const (
	// JSON writes a zap JSON line with the log's own fields (level, time,
	// logger "access"), message "access", and the fields AccessLog lists.
	JSON Format = iota
	// Envoy writes Envoy's default access log format, a text line of its
	// own on the log's output (envoy.go).
	Envoy
)

// Build validates c and returns the filter, which writes to env.AccessLog,
// or in the envoy format to env.AccessLogText at env.AccessLog's level.
func (c *Config) Build(env filters.Env) (filters.Filter, error) {
	a := &AccessLog{log: env.AccessLog, direction: env.Direction, now: env.Now}
	switch c.Format {
	case "", "json":
		a.format = JSON
	case "envoy":
		if env.AccessLogText == nil {
			return nil, filters.Invalid("format", "envoy: this proxy has no output for text lines")
		}
		a.format, a.text = Envoy, env.AccessLogText
	default:
		return nil, filters.Invalid("format", "want json or envoy, got %q", c.Format)
	}
	return a, nil
}

// AccessLog writes one line per request at info level, in JSON (below) or
// in Envoy's default text format (envoy.go). A JSON line's message is "access",
// once the rest of the chain is done with it, or panicked (the line is
// written, then the panic goes on: the router aborts a response with
// panic(http.ErrAbortHandler)). Put it first in the chain so that it sees
// the response the client gets. The fields, besides the log's own time:
//
//	start        Info.Start, RFC 3339 in UTC with milliseconds (when the
//	             filter started, for a request that did not come through
//	             the proxy)
//	direction    inbound or outbound
//	protocol     the request's protocol, "HTTP/1.1", "HTTP/2.0"
//	method       the request's method
//	authority    the request's Host
//	path         the request's path and query
//	code         the final status sent, 0 when none was; 101 for an
//	             upgrade whose connection the router took over
//	flags        the response flags, "-" when none
//	duration_ms  from start to the end of the response, to the microsecond
//	upstream_ms  Info.UpstreamTime, when there is one
//	bytes_in     request body bytes read
//	bytes_out    response body bytes written (not counting what goes
//	             through an upgraded connection)
//	attempts     how many times the request was sent upstream
//	src          the downstream peer's address (Info.Source)
//	upstream     the endpoint the last attempt went to (Info.Endpoint):
//	             one of the Service's, the destination, or the application
//	service      outbound, the destination's Service as "name.namespace",
//	             when discovery knows it
//	peer         the caller's SPIFFE ID, when known
//	request_id   the x-request-id header, when there is one
//	user_agent   the User-Agent header, "" when none
//
// The request's protocol, method, authority, path and User-Agent are taken
// as the filter got them; the request ID once the chain is done, so that a
// requestid filter later in the chain has set it. When the access log does
// not take info lines, the filter only calls next.
//
// AccessLog is immutable and safe for concurrent use.
type AccessLog struct {
	log       *zap.Logger
	direction filters.Direction
	now       func() time.Time
	format    Format
	text      io.Writer // Envoy: where the lines go
	bufs      sync.Pool // Envoy: *[]byte, a line's buffer
}

var _ filters.Filter = (*AccessLog)(nil)

// timeFormat is RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// request is what the line says of the request as the filter got it.
type request struct {
	proto, method, authority, path, userAgent string
}

// ServeHTTP runs next and writes the line.
func (a *AccessLog) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if !a.log.Core().Enabled(zapcore.InfoLevel) {
		next.ServeHTTP(w, r)
		return
	}
	info := filters.FromContext(r.Context())
	start := info.Start
	if start.IsZero() {
		start = a.now()
	}
	req := request{r.Proto, r.Method, r.Host, r.URL.RequestURI(), r.UserAgent()}
	in := new(atomic.Int64)
	if r.Body != nil && r.Body != http.NoBody {
		r = r.WithContext(r.Context()) // a copy: the inbound request keeps its body
		r.Body = &countingBody{ReadCloser: r.Body, n: in}
	}
	o := filters.Observe(w)
	// Deferred calls run while a panic unwinds the stack, so the line is
	// written when next panics without recovering and panicking again.
	if a.format == Envoy {
		defer a.writeEnvoy(req, r, info, start, o, in)
	} else {
		defer a.write(req, r, info, start, o, in)
	}
	next.ServeHTTP(o, r)
}

// write writes the line of r.
func (a *AccessLog) write(req request, r *http.Request, info *filters.Info, start time.Time, o *filters.Observer, in *atomic.Int64) {
	ce := a.log.Check(zapcore.InfoLevel, "access")
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 20)
	fields = append(fields,
		zap.String("start", start.UTC().Format(timeFormat)),
		zap.String("direction", a.direction.String()),
		zap.String("protocol", req.proto),
		zap.String("method", req.method),
		zap.String("authority", req.authority),
		zap.String("path", req.path),
		zap.Int("code", o.Status()),
		zap.String("flags", info.Flags().String()),
		zap.Float64("duration_ms", ms(a.now().Sub(start))),
	)
	if d, ok := info.UpstreamTime(); ok {
		fields = append(fields, zap.Float64("upstream_ms", ms(d)))
	}
	fields = append(fields,
		zap.Int64("bytes_in", in.Load()),
		zap.Int64("bytes_out", o.Written()),
		zap.Int("attempts", info.Attempts()),
	)
	fields = appendAddr(fields, "src", info.Source)
	ep := info.Endpoint()
	fields = appendAddr(fields, "upstream", ep.Addr)
	if ep.Service.Name != "" {
		fields = append(fields, zap.String("service", ep.Service.String()))
	}
	if info.Peer != "" {
		fields = append(fields, zap.String("peer", info.Peer))
	}
	if id := r.Header.Get("X-Request-Id"); id != "" {
		fields = append(fields, zap.String("request_id", id))
	}
	fields = append(fields, zap.String("user_agent", req.userAgent))
	ce.Write(fields...)
}

// appendAddr appends the field key: ap, unless ap is the zero value (a
// request that did not come through the proxy).
func appendAddr(fields []zap.Field, key string, ap netip.AddrPort) []zap.Field {
	if !ap.IsValid() {
		return fields
	}
	return append(fields, zap.String(key, ap.String()))
}

// ms returns d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// countingBody is a request body that counts the bytes read from it in n,
// atomically: the transport may read the body on a goroutine of its own,
// even after the handler returned.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

// Complete passes on what the client's body says of its end (proxy/h2's
// CompleteBody), so that the transports can send a body that has all
// arrived with the request's head.
func (b *countingBody) Complete() (int, bool) {
	if cb, ok := b.ReadCloser.(interface{ Complete() (int, bool) }); ok {
		return cb.Complete()
	}
	return 0, false
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
