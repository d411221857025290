package balance

import (
	"cmp"
	"fmt"
	"time"
)

// Defaults for Config.
const (
	// DefaultDecay is the peak-EWMA's time constant: Linkerd's default. An
	// observation older than a few of these hardly counts any more.
	DefaultDecay = 10 * time.Second
	// DefaultLatencyFloor is the least estimate Pick compares. Below it,
	// latencies differ by what a request's latency varies by on a busy node
	// (scheduling, a collection, a connection's first request), not by what
	// tells a fast endpoint from a slow one; and every blip above the
	// others' estimates shuts an endpoint out for Decay×ln(blip/theirs), so
	// that one request at a time goes for seconds to whichever endpoints
	// had none (the skew Linkerd users report). On this project's test
	// machine, requests of half a millisecond blip to 5–10 ms a few times in
	// 3,000; none went over 10 ms. Below the floor the requests outstanding
	// decide, as in Envoy's least-request, and they reflect latency under
	// load (Little's law); above it the estimate still avoids an endpoint
	// that is clearly slow (a throttled or sick pod) at once.
	DefaultLatencyFloor = 20 * time.Millisecond
	// DefaultProbeAfter is how many times in a row an endpoint may lose
	// its pair for a cheaper one before it is tried anyway. The estimate
	// decays over Decay (seconds) when nothing new is learnt of an
	// endpoint; without probes, one blip on a busy node shuts an endpoint
	// out for that long (measured under make test's load: one endpoint at
	// 14 % of one request at a time instead of 33 %). Of three endpoints,
	// a slow or failing one is then still tried about once in 30 requests
	// (outlier detection ejects a failing one after a few of those).
	DefaultProbeAfter = 20
	// DefaultFailurePenalty is the latency a failure counts as. It is far
	// above a healthy in-cluster request (tens of milliseconds) so that one
	// failure makes an endpoint the last choice of its pair, however fast it
	// failed; and small enough that the estimate decays to the floor in
	// about 40 s (Decay×ln(1s/20ms)), about when an ejection
	// (DefaultBaseEjection) would have ended anyway.
	DefaultFailurePenalty = time.Second
	// DefaultConsecutive5xx is Envoy's outlier detection default.
	DefaultConsecutive5xx = 5
	// DefaultBaseEjection is Envoy's base_ejection_time.
	DefaultBaseEjection = 30 * time.Second
	// DefaultMaxEjection is Envoy's max_ejection_time.
	DefaultMaxEjection = 300 * time.Second
	// DefaultMaxEjectionPercent keeps at least half of the ready endpoints
	// taking requests. Envoy's 10% is meant for large clusters; most
	// Kubernetes Services have a handful of pods, where 10% would allow
	// only the one ejection that is always allowed.
	DefaultMaxEjectionPercent = 50
)

// Config tunes a Balancer. The zero value of each field means its default
// (the Default constants); negative values are invalid. A Config is a plain
// value: validate it once when it loads, then hand it to every New.
type Config struct {
	// Decay is the time constant of the peak-EWMA: an observation made
	// elapsed ago weighs exp(-elapsed/Decay) against a new one.
	Decay time.Duration
	// LatencyFloor is the least latency estimate Pick compares: endpoints
	// whose estimates are both below it count as equally fast.
	LatencyFloor time.Duration
	// ProbeAfter is how many times in a row an endpoint may lose its pair
	// before it wins one anyway: then its answer replaces its estimate.
	ProbeAfter int
	// FailurePenalty is the least latency a failed request counts as, so
	// that an endpoint failing fast does not look fast.
	FailurePenalty time.Duration
	// Consecutive5xx is how many failures in a row (connect failures,
	// resets, 5xx: whatever the caller reports as failed) eject an
	// endpoint.
	Consecutive5xx int
	// BaseEjection is how long the first ejection of an endpoint lasts; the
	// n-th lasts n×BaseEjection, at most MaxEjection. n drops by one for
	// every BaseEjection the endpoint has since spent back in service.
	BaseEjection time.Duration
	// MaxEjection caps an ejection's length. It must not be less than
	// BaseEjection.
	MaxEjection time.Duration
	// MaxEjectionPercent is the most of the ready endpoints that may be
	// ejected at once, 1 to 100. One endpoint of two or more may always be
	// ejected, whatever the percentage (Envoy's rule).
	MaxEjectionPercent int
}

// Validate returns an error naming the first field of c that is not valid,
// defaults applied.
func (c Config) Validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"decay", c.Decay},
		{"latencyFloor", c.LatencyFloor},
		{"failurePenalty", c.FailurePenalty},
		{"baseEjection", c.BaseEjection},
		{"maxEjection", c.MaxEjection},
	} {
		if d.v < 0 {
			return fmt.Errorf("balance: %s: must not be negative, got %v", d.name, d.v)
		}
	}
	if c.ProbeAfter < 0 {
		return fmt.Errorf("balance: probeAfter: must not be negative, got %d", c.ProbeAfter)
	}
	if c.Consecutive5xx < 0 {
		return fmt.Errorf("balance: consecutive5xx: must not be negative, got %d", c.Consecutive5xx)
	}
	if c.MaxEjectionPercent < 0 || c.MaxEjectionPercent > 100 {
		return fmt.Errorf("balance: maxEjectionPercent: must be 0 to 100, got %d", c.MaxEjectionPercent)
	}
	if d := c.withDefaults(); d.MaxEjection < d.BaseEjection {
		return fmt.Errorf("balance: maxEjection: must be at least baseEjection (%v), got %v", d.BaseEjection, d.MaxEjection)
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Decay = cmp.Or(c.Decay, DefaultDecay)
	c.LatencyFloor = cmp.Or(c.LatencyFloor, DefaultLatencyFloor)
	c.FailurePenalty = cmp.Or(c.FailurePenalty, DefaultFailurePenalty)
	c.BaseEjection = cmp.Or(c.BaseEjection, DefaultBaseEjection)
	c.MaxEjection = cmp.Or(c.MaxEjection, DefaultMaxEjection)
	c.Consecutive5xx = cmp.Or(c.Consecutive5xx, DefaultConsecutive5xx)
	c.ProbeAfter = cmp.Or(c.ProbeAfter, DefaultProbeAfter)
	c.MaxEjectionPercent = cmp.Or(c.MaxEjectionPercent, DefaultMaxEjectionPercent)
	return c
}
