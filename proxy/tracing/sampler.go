package tracing

import (
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// sampler is parent-based with a ratio for roots, as Envoy and Istio
// sample: a caller's sampled flag is followed either way; a request with
// no parent, or a B3 parent that left the decision to us, is sampled at
// the configured ratio; x-client-trace-id and B3 debug force sampling
// (x-client-trace-id even against an unsampled parent, as in Envoy), B3's
// sampling state 0 denies it.
type sampler struct {
	ratio sdktrace.Sampler
}

var _ sdktrace.Sampler = sampler{}

func newSampler(fraction float64) sampler {
	return sampler{ratio: sdktrace.TraceIDRatioBased(fraction)}
}

// ShouldSample decides for one span.
func (s sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	res := sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: psc.TraceState()}
	switch decisionFrom(p.ParentContext) {
	case forced:
		res.Decision = sdktrace.RecordAndSample
	case denied:
	case deferred:
		res.Decision = s.ratio.ShouldSample(p).Decision
	default:
		if !psc.IsValid() {
			res.Decision = s.ratio.ShouldSample(p).Decision
		} else if psc.IsSampled() {
			res.Decision = sdktrace.RecordAndSample
		}
	}
	return res
}

// Description names the sampler.
func (s sampler) Description() string {
	return "pillion.ParentBased{root:" + s.ratio.Description() + ",forced:x-client-trace-id}"
}
