package tracing

import (
	"context"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// formats is the set of trace-context header formats a request came with,
// beside W3C Trace Context, which is always written.
type formats uint8

const (
	b3Single formats = 1 << iota // b3: {TraceId}-{SpanId}-{Sampled}-{ParentSpanId}
	b3Multi                      // X-B3-TraceId, X-B3-SpanId, X-B3-Sampled, X-B3-Flags, X-B3-ParentSpanId
)

// The B3 headers (https://github.com/openzipkin/b3-propagation), in their
// canonical form for direct map access.
const (
	b3Header      = "B3"
	b3TraceID     = "X-B3-Traceid"
	b3SpanID      = "X-B3-Spanid"
	b3ParentID    = "X-B3-Parentspanid"
	b3Sampled     = "X-B3-Sampled"
	b3Flags       = "X-B3-Flags"
	clientTraceID = "X-Client-Trace-Id"
	tracestate    = "Tracestate"
)

// decision is what a request says about its own sampling beside its
// parent's trace flags.
type decision uint8

const (
	fromParent decision = iota // the parent's sampled flag decides (no parent: the ratio)
	deferred                   // a B3 parent without a sampling state: the ratio decides
	forced                     // x-client-trace-id or B3 debug: sampled
	denied                     // B3 sampling state 0: not sampled, parent or not
)

type decisionKey struct{}

func withDecision(ctx context.Context, d decision) context.Context {
	if d == fromParent {
		return ctx
	}
	return context.WithValue(ctx, decisionKey{}, d)
}

func decisionFrom(ctx context.Context) decision {
	d, _ := ctx.Value(decisionKey{}).(decision)
	return d
}

// extract returns ctx with the remote parent h carries, W3C traceparent
// first, then B3 single, then B3 multi; the B3 formats h holds, which the
// request is forwarded with too; and the request's own sampling decision.
func extract(ctx context.Context, h http.Header) (context.Context, formats) {
	var f formats
	if len(h[b3Header]) > 0 {
		f |= b3Single
	}
	if len(h[b3TraceID]) > 0 || len(h[b3Sampled]) > 0 || len(h[b3Flags]) > 0 {
		f |= b3Multi
	}
	d := fromParent
	if ts := h[tracestate]; len(ts) > 1 {
		// W3C: several tracestate fields are one list.
		h[tracestate] = []string{strings.Join(ts, ",")}
	}
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(h))
	if !trace.SpanContextFromContext(ctx).IsValid() {
		var sc trace.SpanContext
		switch {
		case f&b3Single != 0:
			sc, d = parseB3Single(first(h, b3Header))
		case f&b3Multi != 0:
			sc, d = parseB3Multi(h)
		}
		if sc.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
		} else if d == fromParent && f != 0 {
			d = forced // B3's accept sent on its own: trace this request
		}
	} else if f != 0 && b3Debug(h) {
		d = forced
	}
	if strings.TrimSpace(first(h, clientTraceID)) != "" {
		d = forced // Envoy: x-client-trace-id forces tracing
	}
	return withDecision(ctx, d), f
}

// b3Debug reports whether h's B3 headers ask for debug (forced) tracing.
func b3Debug(h http.Header) bool {
	if first(h, b3Flags) == "1" {
		return true
	}
	parts := strings.Split(first(h, b3Header), "-")
	return (len(parts) == 1 && parts[0] == "d") || (len(parts) >= 3 && parts[2] == "d")
}

// inject writes sc into h as W3C traceparent/tracestate and in the B3
// formats f, replacing what h carried; parent is sc's parent span (B3's
// ParentSpanId), invalid when none.
func inject(ctx context.Context, h http.Header, f formats, parent trace.SpanID) {
	debug := f != 0 && b3Debug(h) // before h is rewritten
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(h))
	sc := trace.SpanContextFromContext(ctx)
	sampled := "0"
	switch {
	case debug:
		sampled = "d"
	case sc.IsSampled():
		sampled = "1"
	}
	if f&b3Single != 0 {
		v := sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sampled
		if parent.IsValid() {
			v += "-" + parent.String()
		}
		h[b3Header] = []string{v}
	}
	if f&b3Multi != 0 {
		h[b3TraceID] = []string{sc.TraceID().String()}
		h[b3SpanID] = []string{sc.SpanID().String()}
		if debug {
			// Debug implies accept: X-B3-Flags alone, no X-B3-Sampled.
			h[b3Flags] = []string{"1"}
			delete(h, b3Sampled)
		} else {
			h[b3Sampled] = []string{sampled}
			delete(h, b3Flags)
		}
		if parent.IsValid() {
			h[b3ParentID] = []string{parent.String()}
		} else {
			delete(h, b3ParentID)
		}
	}
}

// parseB3Single parses the b3 header: "{TraceId}-{SpanId}", optionally
// "-{SamplingState}" and "-{ParentSpanId}"; or a lone sampling state
// ("0", "1", "d"), which carries no parent.
func parseB3Single(v string) (trace.SpanContext, decision) {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) == 1 {
		return trace.SpanContext{}, b3State(parts[0], "")
	}
	if len(parts) > 4 {
		return trace.SpanContext{}, fromParent
	}
	state := ""
	if len(parts) >= 3 {
		state = parts[2]
	}
	return b3Context(parts[0], parts[1], state, "")
}

// parseB3Multi parses the X-B3-* headers.
func parseB3Multi(h http.Header) (trace.SpanContext, decision) {
	return b3Context(first(h, b3TraceID), first(h, b3SpanID), first(h, b3Sampled), first(h, b3Flags))
}

// b3Context builds the remote span context of B3 values; an invalid
// trace or span ID gives the zero SpanContext (no parent), but the
// sampling state still counts.
func b3Context(traceID, spanID, state, flags string) (trace.SpanContext, decision) {
	d := b3State(state, flags)
	if len(traceID) == 16 {
		traceID = "0000000000000000" + traceID
	}
	tid, err := trace.TraceIDFromHex(strings.ToLower(traceID))
	if err != nil {
		return trace.SpanContext{}, d
	}
	sid, err := trace.SpanIDFromHex(strings.ToLower(spanID))
	if err != nil {
		return trace.SpanContext{}, d
	}
	var tf trace.TraceFlags
	if d == forced || state == "1" || strings.EqualFold(state, "true") {
		tf = trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: tf, Remote: true}), d
}

// b3State maps a B3 sampling state (and X-B3-Flags) to a decision: "d" or
// flags 1 force, "0" denies, "1" is the parent's word, none defers to
// the ratio.
func b3State(state, flags string) decision {
	switch {
	case state == "d" || flags == "1":
		return forced
	case state == "":
		return deferred
	case state == "0" || strings.EqualFold(state, "false"):
		return denied
	default:
		return fromParent
	}
}

func first(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
