package tracing

import (
	"context"
	"net/http"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

const (
	tid   = "4bf92f3577b34da6a3ce929d0e0e4736"
	sid   = "00f067aa0ba902b7"
	newID = "b7ad6b7169203331"
)

func TestExtract(t *testing.T) {
	for _, tc := range []struct {
		name     string
		h        http.Header
		trace    string // "" when no parent
		span     string
		sampled  bool
		decision decision
		formats  formats
	}{
		{name: "none", h: http.Header{}},
		{name: "w3c sampled", h: http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-01"}}, trace: tid, span: sid, sampled: true},
		{name: "w3c unsampled", h: http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-00"}}, trace: tid, span: sid},
		{name: "w3c malformed", h: http.Header{"Traceparent": {"00-xyz-" + sid + "-01"}}},
		{name: "b3 single", h: http.Header{"B3": {tid + "-" + sid + "-1"}}, trace: tid, span: sid, sampled: true, formats: b3Single},
		{name: "b3 single 64-bit", h: http.Header{"B3": {"a3ce929d0e0e4736-" + sid + "-0-" + newID}}, trace: "0000000000000000a3ce929d0e0e4736", span: sid, decision: denied, formats: b3Single},
		{name: "b3 single deferred", h: http.Header{"B3": {tid + "-" + sid}}, trace: tid, span: sid, decision: deferred, formats: b3Single},
		{name: "b3 single debug", h: http.Header{"B3": {tid + "-" + sid + "-d"}}, trace: tid, span: sid, sampled: true, decision: forced, formats: b3Single},
		{name: "b3 deny only", h: http.Header{"B3": {"0"}}, decision: denied, formats: b3Single},
		{name: "b3 multi", h: http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"1"}}, trace: tid, span: sid, sampled: true, formats: b3Multi},
		{name: "b3 multi flags", h: http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Flags": {"1"}}, trace: tid, span: sid, sampled: true, decision: forced, formats: b3Multi},
		{name: "b3 multi deferred", h: http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}}, trace: tid, span: sid, decision: deferred, formats: b3Multi},
		{name: "w3c wins over b3", h: http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-01"}, "B3": {"0000000000000000a3ce929d0e0e4736-" + newID + "-0"}}, trace: tid, span: sid, sampled: true, formats: b3Single},
		{name: "client trace id forces", h: http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-00"}, "X-Client-Trace-Id": {"abc"}}, trace: tid, span: sid, decision: forced},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, f := extract(context.Background(), tc.h)
			sc := trace.SpanContextFromContext(ctx)
			if tc.trace == "" {
				if sc.IsValid() {
					t.Fatalf("parent %v, want none", sc)
				}
			} else if sc.TraceID().String() != tc.trace || sc.SpanID().String() != tc.span || sc.IsSampled() != tc.sampled || !sc.IsRemote() {
				t.Fatalf("parent %s-%s sampled %v remote %v, want %s-%s sampled %v", sc.TraceID(), sc.SpanID(), sc.IsSampled(), sc.IsRemote(), tc.trace, tc.span, tc.sampled)
			}
			if d := decisionFrom(ctx); d != tc.decision {
				t.Errorf("decision %d, want %d", d, tc.decision)
			}
			if f != tc.formats {
				t.Errorf("formats %b, want %b", f, tc.formats)
			}
		})
	}
}

func TestInject(t *testing.T) {
	tr, _ := trace.TraceIDFromHex(tid)
	sp, _ := trace.SpanIDFromHex(newID)
	parent, _ := trace.SpanIDFromHex(sid)
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tr, SpanID: sp, TraceFlags: trace.FlagsSampled}))
	for _, tc := range []struct {
		name string
		f    formats
		in   http.Header
		want http.Header
	}{
		{name: "w3c only", in: http.Header{"Traceparent": {"00-" + tid + "-" + sid + "-01"}}, want: http.Header{"Traceparent": {"00-" + tid + "-" + newID + "-01"}}},
		{name: "b3 single", f: b3Single, in: http.Header{"B3": {tid + "-" + sid + "-1"}}, want: http.Header{
			"Traceparent": {"00-" + tid + "-" + newID + "-01"}, "B3": {tid + "-" + newID + "-1-" + sid},
		}},
		{name: "b3 multi", f: b3Multi, in: http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Flags": {"1"}}, want: http.Header{
			// Debug came in: it goes on as X-B3-Flags alone (B3: debug
			// implies accept, X-B3-Sampled is not sent beside it).
			"Traceparent": {"00-" + tid + "-" + newID + "-01"}, "X-B3-Traceid": {tid}, "X-B3-Spanid": {newID}, "X-B3-Flags": {"1"}, "X-B3-Parentspanid": {sid},
		}},
		{name: "b3 multi sampled", f: b3Multi, in: http.Header{"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"1"}}, want: http.Header{
			"Traceparent": {"00-" + tid + "-" + newID + "-01"}, "X-B3-Traceid": {tid}, "X-B3-Spanid": {newID}, "X-B3-Sampled": {"1"}, "X-B3-Parentspanid": {sid},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inject(ctx, tc.in, tc.f, parent)
			if len(tc.in) != len(tc.want) {
				t.Errorf("headers %v, want %v", tc.in, tc.want)
			}
			for k, v := range tc.want {
				if got := tc.in[k]; len(got) != 1 || got[0] != v[0] {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
}

func FuzzExtract(f *testing.F) {
	f.Add("00-"+tid+"-"+sid+"-01", tid+"-"+sid+"-d-"+newID, tid, sid, "1")
	f.Fuzz(func(t *testing.T, tp, b3, mt, ms, sampled string) {
		h := http.Header{"Traceparent": {tp}, "B3": {b3}, "X-B3-Traceid": {mt}, "X-B3-Spanid": {ms}, "X-B3-Sampled": {sampled}}
		ctx, _ := extract(context.Background(), h)
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsRemote() {
			t.Fatalf("a parent from headers must be remote: %v", sc)
		}
	})
}
