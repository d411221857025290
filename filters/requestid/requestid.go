// Package requestid is the HTTP filter that gives every request an ID: it
// keeps the one the request carries and makes up a random UUID v4 when there
// is none, so that the application, the proxies and the access logs of one
// request can be matched. The outbound chain runs it by default, first,
// unless the config file lists it or says generateRequestId: false
// (proxy/configfile), as Envoy's generate_request_id. It never touches the
// W3C trace context (traceparent, tracestate): tracing is the
// application's business.
package requestid

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
)

// DefaultHeader is the header that carries the ID when Config.Header is
// empty.
const DefaultHeader = "x-request-id"

// Config is the requestid filter's configuration.
type Config struct {
	// Header names the header that carries the ID; "" means DefaultHeader.
	// It must be a valid header name, and may be neither a hop-by-hop
	// header, Host, nor a W3C trace context header.
	Header string `json:"header,omitempty"`
}

var (
	_ filters.Config = (*Config)(nil)
	_ filters.Filter = (*RequestID)(nil)
)

// Build validates c and returns a *RequestID. env is not used.
func (c *Config) Build(filters.Env) (filters.Filter, error) {
	name := c.Header
	if name == "" {
		name = DefaultHeader
	}
	if !httpguts.ValidHeaderFieldName(name) {
		return nil, filters.Invalid("header", "%q is not a valid header name", name)
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	switch key {
	case "Traceparent", "Tracestate":
		return nil, filters.Invalid("header", "%q is W3C trace context, which the proxy never changes", name)
	case "Host":
		return nil, filters.Invalid("header", "%q is the request's authority, not a header for an ID", name)
	}
	if filters.IsHopByHop(key) {
		return nil, filters.Invalid("header", "%q is hop-by-hop: it is never forwarded", name)
	}
	return &RequestID{header: key}, nil
}

// RequestID is the built filter. It holds no state beyond its config and
// is safe for concurrent use.
type RequestID struct {
	header string // canonical
}

// ServeHTTP keeps r's ID when its header has a non-empty first value, else
// sets the header to a new random UUID v4, then calls next.
func (f *RequestID) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if v := r.Header[f.header]; len(v) == 0 || strings.TrimSpace(v[0]) == "" {
		r.Header[f.header] = []string{newUUID()}
	}
	next.ServeHTTP(w, r)
}

// newUUID returns a random (version 4, RFC 9562) UUID in its 36-character
// text form.
func newUUID() string {
	var b [16]byte
	// rand.Read never fails: it crashes the program instead (Go 1.24).
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
