package h2

import (
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http2/hpack"
)

// canonical is the canonical form of a lower-case field name, without an
// allocation for the common ones.
func canonical(name string) string {
	if c, ok := commonCanonical[name]; ok {
		return c
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

// commonCanonical and commonLower map the common field names between
// their canonical and their lower-case (HTTP/2) forms. Read-only.
var commonCanonical, commonLower = func() (map[string]string, map[string]string) {
	names := []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Access-Control-Allow-Origin", "Age", "Allow", "Authorization", "B3", "Baggage",
		"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language",
		"Content-Length", "Content-Location", "Content-Range", "Content-Type", "Cookie",
		"Date", "Etag", "Expect", "Expires", "Forwarded", "From", "Grpc-Encoding",
		"Grpc-Accept-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout", "Host",
		"If-Match", "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since",
		"Last-Modified", "Link", "Location", "Max-Forwards", "Origin", "Proxy-Authenticate",
		"Proxy-Authorization", "Range", "Referer", "Refresh", "Retry-After", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Te", "Trailer", "Traceparent", "Tracestate",
		"Transfer-Encoding", "User-Agent", "Vary", "Via", "Www-Authenticate",
		"X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Spanid", "X-B3-Traceid",
		"X-Content-Type-Options", "X-Envoy-Attempt-Count", "X-Envoy-Upstream-Service-Time",
		"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Pillion-Orig-Proto", "X-Request-Id",
	}
	canon, lower := make(map[string]string, len(names)), make(map[string]string, len(names))
	for _, n := range names {
		l := strings.ToLower(n)
		canon[l], lower[n] = n, l
	}
	return canon, lower
}()

// fieldsHeader is the header of the regular fields of a HEADERS frame, by
// canonical name. Their values share one allocation: a name that comes
// again gets a slice of its own, as append copies past the capacity.
func fieldsHeader(regular []hpack.HeaderField) http.Header {
	header := make(http.Header, len(regular))
	vals := make([]string, len(regular))
	for i, hf := range regular {
		k := canonical(hf.Name)
		vals[i] = hf.Value
		if old, ok := header[k]; ok {
			header[k] = append(old, hf.Value)
		} else {
			header[k] = vals[i : i+1 : i+1]
		}
	}
	return header
}

// lower is a canonical field name's HTTP/2 form.
func lower(k string) string {
	if l, ok := commonLower[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

// connectionSpecific are the fields RFC 9113 §8.2.2 forbids in HTTP/2,
// by canonical name: a request carrying one is malformed, and neither
// side sends them.
var connectionSpecific = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true, "Upgrade": true,
}
