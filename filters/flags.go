package filters

import (
	"net/http"
	"strings"
)

// Flags say why the proxy answered a request itself or cut it short. Their
// names are Envoy's response flags where Envoy has one, so that dashboards
// and runbooks keep working.
type Flags uint32

// The response flags.
const (
	// UpstreamConnectFailure (UF): connecting to the upstream failed.
	UpstreamConnectFailure Flags = 1 << iota
	// UpstreamReset (UC): the upstream closed or reset the connection or
	// stream before a full response.
	UpstreamReset
	// UpstreamTimeout (UT): the request's time-out passed before the
	// upstream answered.
	UpstreamTimeout
	// UpstreamProtocolError (UPE): the upstream's answer was not valid HTTP.
	UpstreamProtocolError
	// RetryLimitExceeded (URX): the last allowed attempt failed.
	RetryLimitExceeded
	// RateLimited (RL): the ratelimit filter refused the request.
	RateLimited
	// FaultAbort (FI): the fault filter answered instead of the upstream.
	FaultAbort
	// FaultDelay (DI): the fault filter delayed the request.
	FaultDelay
	// DownstreamDisconnect (DC): the client went away before the response
	// was complete.
	DownstreamDisconnect
	// Unauthorized (UAEX): the authz filter denied the request.
	Unauthorized
	// NoHealthyUpstream (UH): the destination's Service has no endpoint
	// that may take the request (none ready, or discovery named none).
	NoHealthyUpstream
	// DownstreamProtocolError (DPE): the client's request was not valid
	// HTTP (its body's framing broke); answered 400, connection closed.
	DownstreamProtocolError

	numFlags = iota
)

var flagNames = [numFlags]string{"UF", "UC", "UT", "UPE", "URX", "RL", "FI", "DI", "DC", "UAEX", "UH", "DPE"}

// String returns the flags as Envoy prints them: short names joined by
// commas, or "-" when there are none.
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var b strings.Builder
	for i, name := range flagNames {
		if f&(1<<i) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(name)
	}
	return b.String()
}

// Header names the proxy adds to responses it makes itself.
const (
	// FlagsHeader carries the response flags of a proxy-made response.
	FlagsHeader = "pillion-response-flags"
	// ErrorHeader says in words why the proxy answered, like Linkerd's
	// l5d-proxy-error.
	ErrorHeader = "pillion-proxy-error"
)

// Reply answers r from the proxy: status, the flags (also recorded in r's
// Info), the reason in ErrorHeader and as a one-line text body. reason must
// not contain a line break. When headers were already sent upstream's way,
// Reply can only record the flags; the caller should then abort the
// response (panic(http.ErrAbortHandler)).
func Reply(w http.ResponseWriter, r *http.Request, status int, flags Flags, reason string) {
	FromContext(r.Context()).AddFlags(flags)
	h := w.Header()
	// The server's own Connection: close (a draining sidecar's) stays;
	// anything else set for the answer that was not sent goes.
	closeConn := h.Get("Connection") == "close"
	for k := range h {
		delete(h, k)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(FlagsHeader, flags.String())
	h.Set(ErrorHeader, reason)
	if closeConn || (flags&DownstreamProtocolError != 0 && r.ProtoMajor == 1) {
		// After a DPE, what follows on the connection cannot be told
		// apart any more.
		h.Set("Connection", "close")
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(reason + "\n"))
	}
}
