package tracing

import (
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pillionmesh/pillion/filters"
)

// The span attributes pillion adds to OpenTelemetry's HTTP semantic
// conventions. Where Envoy (and so Istio) has a name for the same fact,
// it is Envoy's.
const (
	// AttrRequestID is the request's x-request-id, as Envoy names it.
	AttrRequestID = attribute.Key("guid:x-request-id")
	// AttrResponseFlags are the response flags, as in the access log
	// ("-" when none).
	AttrResponseFlags = attribute.Key("response_flags")
	// AttrUpstreamServiceTime is the upstream service time in
	// milliseconds: the figure of x-envoy-upstream-service-time.
	AttrUpstreamServiceTime = attribute.Key("upstream_service_time_ms")
	// AttrPeerSPIFFEID is the peer sidecar's SPIFFE ID: the caller's on
	// the inbound side, the one the upstream must present outbound.
	AttrPeerSPIFFEID = attribute.Key("pillion.peer.spiffe_id")
	// AttrDestinationService and AttrDestinationNamespace are the
	// destination Service's name and namespace, from discovery.
	AttrDestinationService   = attribute.Key("pillion.destination_service.name")
	AttrDestinationNamespace = attribute.Key("pillion.destination_service.namespace")
	// AttrDirection is "inbound" or "outbound".
	AttrDirection = attribute.Key("pillion.direction")
)

// requestIDHeader is where the request ID travels (the requestid
// filter's default header, canonical).
const requestIDHeader = "X-Request-Id"

// spanName is Istio's: the request's authority with its port, and "/*"
// for the route (pillion has no routes).
func spanName(r *http.Request, info *filters.Info) string {
	host := r.Host
	if _, _, err := net.SplitHostPort(host); err != nil && info.Destination.IsValid() {
		if host == "" {
			host = info.Destination.Addr().String()
		}
		host = net.JoinHostPort(host, strconv.Itoa(int(info.Destination.Port())))
	}
	return host + "/*"
}

// end records what the proxy learned of the request and ends span.
// status is the response's (0: none sent); returned is false when the
// chain panicked (the response aborted).
func end(span trace.Span, r *http.Request, info *filters.Info, status int, returned bool) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if status == 0 && returned {
		status = http.StatusOK
	}
	attrs := make([]attribute.KeyValue, 0, 20)
	attrs = append(attrs,
		semconv.HTTPRequestMethodKey.String(r.Method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme("http"),
		semconv.NetworkProtocolVersion(protoVersion(r)),
		AttrDirection.String(info.Direction.String()),
		AttrResponseFlags.String(info.Flags().String()),
	)
	if host, port, err := net.SplitHostPort(r.Host); err == nil {
		attrs = append(attrs, semconv.ServerAddress(host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, semconv.ServerPort(p))
		}
	} else if r.Host != "" {
		attrs = append(attrs, semconv.ServerAddress(r.Host))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(ua))
	}
	if info.Source.IsValid() {
		attrs = append(attrs, semconv.ClientAddress(info.Source.Addr().String()))
	}
	if id := first(r.Header, requestIDHeader); id != "" {
		attrs = append(attrs, AttrRequestID.String(id))
	}
	ep := info.Endpoint()
	peer := info.Peer
	if info.Direction == filters.Outbound {
		peer = ep.Identity
	}
	if peer != "" {
		attrs = append(attrs, AttrPeerSPIFFEID.String(peer))
	}
	if ep.Addr.IsValid() {
		attrs = append(attrs, semconv.NetworkPeerAddress(ep.Addr.Addr().String()), semconv.NetworkPeerPort(int(ep.Addr.Port())))
	}
	if ep.Service.Name != "" {
		attrs = append(attrs, AttrDestinationService.String(ep.Service.Name), AttrDestinationNamespace.String(ep.Service.Namespace))
	}
	if d, ok := info.UpstreamTime(); ok {
		attrs = append(attrs, AttrUpstreamServiceTime.Int64(d.Milliseconds()))
	}
	if status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	span.SetAttributes(attrs...)
	// OpenTelemetry: a server span is an error from 500 on, a client span
	// from 400 on; no response at all is one either way.
	limit := 500
	if info.Direction == filters.Outbound {
		limit = 400
	}
	switch {
	case status == 0:
		span.SetStatus(codes.Error, "no response")
	case status >= limit:
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

func protoVersion(r *http.Request) string {
	if r.ProtoMajor == 2 {
		return "2"
	}
	return strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor)
}
