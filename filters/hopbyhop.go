package filters

import (
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// hopByHop are the headers of one connection, never forwarded (RFC 9110
// section 7.6.1, plus the pre-standard ones proxies still see).
var hopByHop = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// IsHopByHop reports whether name (any case) is one of the standard
// hop-by-hop headers, which filters may not set: they belong to one
// connection, which the proxy manages.
func IsHopByHop(name string) bool {
	return slices.Contains(hopByHop, textproto.CanonicalMIMEHeaderKey(name))
}

// RemoveHopByHop deletes from h the hop-by-hop headers and those the
// Connection header names. It keeps "TE: trailers", which gRPC needs end to
// end. It returns the protocol the client asked to switch to, lowercased,
// when the request is an upgrade ("Connection: upgrade" and an Upgrade
// header), except h2c: an HTTP/2 upgrade of this hop is the proxy's
// business, and is refused by ignoring it, as Envoy does.
func RemoveHopByHop(h http.Header) (upgrade string) {
	if httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		upgrade = strings.ToLower(strings.TrimSpace(h.Get("Upgrade")))
		if upgrade == "h2c" {
			upgrade = ""
		}
	}
	trailers := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	RemoveHopByHopResponse(h)
	if trailers {
		h.Set("Te", "trailers")
	}
	return upgrade
}

// RemoveHopByHopResponse deletes from h, a response's header, the
// hop-by-hop headers and those the Connection header names.
func RemoveHopByHopResponse(h http.Header) {
	for _, v := range h["Connection"] {
		for sf := range strings.SplitSeq(v, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// InternalPrefix starts the names of the headers sidecars send each other
// (pillion-orig-proto, pillion-attempt-count, …), in any case.
const InternalPrefix = "Pillion-"

// RemoveInternal drops the pillion- headers from a request that did not
// come from a peer sidecar: they are the sidecars' own, trusted only
// between them over mTLS, and an application or a plaintext caller must not
// be able to set them (a forged pillion-orig-proto would change how the
// request reaches the application).
func RemoveInternal(h http.Header) {
	for k := range h {
		if len(k) >= len(InternalPrefix) && strings.EqualFold(k[:len(InternalPrefix)], InternalPrefix) {
			delete(h, k)
		}
	}
}
