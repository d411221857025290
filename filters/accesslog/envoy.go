package accesslog

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/filters"
)

// EnvoyFormat is Envoy's default access log format string
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#default-format-string),
// which the Envoy format writes: every field that is not set, or empty, is
// "-", as in Envoy.
const EnvoyFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// maxPooledLine is the largest line buffer kept for the next line.
const maxPooledLine = 4 << 10

// writeEnvoy writes r's line in EnvoyFormat, one Write, when the access
// log takes info lines. Its operators are, in pillion's terms:
//
//	START_TIME        start, UTC, with milliseconds: 2026-01-02T03:04:05.678Z
//	:METHOD           the request's method, as the filter got it
//	X-ENVOY-ORIGINAL-PATH?:PATH
//	                  the path and query as the filter got them (pillion
//	                  never rewrites a path, so there is no original one)
//	PROTOCOL          HTTP/1.0, HTTP/1.1 or HTTP/2, as Envoy names them
//	RESPONSE_CODE     the status sent, 0 when none was
//	RESPONSE_FLAGS    the response flags, comma-separated, "-" when none
//	BYTES_RECEIVED    request body bytes read
//	BYTES_SENT        response body bytes written
//	DURATION          from start to the end of the response, whole ms
//	X-ENVOY-UPSTREAM-SERVICE-TIME
//	                  that header of the response sent (the router's
//	                  upstreamServiceTimeHeader), "-" without it
//	X-FORWARDED-FOR, X-REQUEST-ID
//	                  those request headers once the chain is done (a
//	                  requestid filter later in the chain has set its ID)
//	USER-AGENT, :AUTHORITY
//	                  as the filter got them
//	UPSTREAM_HOST     the endpoint the last attempt went to, address:port
//
// Header values are written as they are, not escaped, as Envoy does; a
// header value cannot hold a line break.
func (a *AccessLog) writeEnvoy(req request, r *http.Request, info *filters.Info, start time.Time, o *filters.Observer, in *atomic.Int64) {
	if !a.log.Core().Enabled(zapcore.InfoLevel) {
		return
	}
	bp, _ := a.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	b := (*bp)[:0]
	b = append(b, '[')
	b = start.UTC().AppendFormat(b, timeFormat)
	b = append(b, "] \""...)
	b = appendValue(b, req.method)
	b = append(b, ' ')
	b = appendValue(b, req.path)
	b = append(b, ' ')
	b = appendValue(b, envoyProtocol(req.proto))
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(o.Status()), 10)
	b = append(b, ' ')
	b = append(b, info.Flags().String()...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, in.Load(), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, o.Written(), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, a.now().Sub(start).Milliseconds(), 10)
	b = append(b, ' ')
	b = appendValue(b, o.Header().Get("X-Envoy-Upstream-Service-Time"))
	for _, v := range []string{r.Header.Get("X-Forwarded-For"), req.userAgent, r.Header.Get("X-Request-Id"), req.authority} {
		b = append(b, " \""...)
		b = appendValue(b, v)
		b = append(b, '"')
	}
	b = append(b, " \""...)
	if ep := info.Endpoint().Addr; ep.IsValid() {
		b = ep.AppendTo(b)
	} else {
		b = append(b, '-')
	}
	b = append(b, "\"\n"...)
	// As with zap's own lines, a log that cannot be written is not the
	// request's failure.
	_, _ = a.text.Write(b)
	if cap(b) <= maxPooledLine { // a huge line's buffer is left to the GC
		*bp = b
		a.bufs.Put(bp)
	}
}

// appendValue appends v, or "-" when it is empty.
func appendValue(b []byte, v string) []byte {
	if v == "" {
		return append(b, '-')
	}
	return append(b, v...)
}

// envoyProtocol names a request's protocol as Envoy's PROTOCOL does.
func envoyProtocol(proto string) string {
	switch proto {
	case "HTTP/2.0":
		return "HTTP/2"
	case "HTTP/3.0":
		return "HTTP/3"
	}
	return proto
}
