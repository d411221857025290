// Package fault is the HTTP filter that injects faults, to test how
// applications cope: it delays a share of requests by a fixed time, and
// answers a share of them itself with an error status instead of sending
// them on. Like Envoy's fault filter it delays first, then decides whether
// to abort, each with its own draw.
package fault

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// Config is the fault filter's configuration. At least one of Delay and
// Abort is required.
type Config struct {
	// Delay delays a share of requests; nil delays none.
	Delay *Delay `json:"delay,omitempty"`
	// Abort answers a share of requests from the proxy; nil aborts none.
	Abort *Abort `json:"abort,omitempty"`
}

// Delay is the delay fault.
type Delay struct {
	// Percent is the share of requests delayed, 0 to 100 (a float: 0.1
	// is one in a thousand).
	Percent float64 `json:"percent"`
	// Fixed is how long a delayed request waits, more than 0.
	Fixed filters.Duration `json:"fixed"`
}

// Abort is the abort fault.
type Abort struct {
	// Percent is the share of requests aborted, 0 to 100.
	Percent float64 `json:"percent"`
	// Status is the status of the proxy's answer, 200 to 599.
	Status int `json:"status"`
}

var (
	_ filters.Config = (*Config)(nil)
	_ filters.Filter = (*Fault)(nil)
)

// Build validates c and returns a *Fault drawing from math/rand/v2. env is
// not used.
func (c *Config) Build(filters.Env) (filters.Filter, error) { return New(*c, nil) }

// New validates cfg and returns the filter. rnd returns a number in [0, 1)
// for each decision (nil means math/rand/v2's Float64); it must be safe for
// concurrent use. A request is delayed when Delay is set and 100*rnd() <
// Delay.Percent, then aborted when Abort is set and 100*rnd() <
// Abort.Percent.
func New(cfg Config, rnd func() float64) (*Fault, error) {
	if cfg.Delay == nil && cfg.Abort == nil {
		return nil, filters.Invalid("", "needs delay, abort or both")
	}
	f := &Fault{rnd: rnd}
	if f.rnd == nil {
		f.rnd = rand.Float64
	}
	if d := cfg.Delay; d != nil {
		if err := checkPercent(d.Percent); err != nil {
			return nil, filters.Within("delay.percent", err)
		}
		if d.Fixed <= 0 {
			return nil, filters.Invalid("delay.fixed", "must be more than 0s, got %v", d.Fixed.Std())
		}
		f.delayPercent, f.delay = d.Percent, d.Fixed.Std()
	}
	if a := cfg.Abort; a != nil {
		if err := checkPercent(a.Percent); err != nil {
			return nil, filters.Within("abort.percent", err)
		}
		if a.Status < 200 || a.Status > 599 {
			return nil, filters.Invalid("abort.status", "must be 200 to 599, got %d", a.Status)
		}
		f.abortPercent, f.status = a.Percent, a.Status
	}
	return f, nil
}

func checkPercent(p float64) error {
	if !(p >= 0 && p <= 100) { // NaN too
		return filters.Invalid("", "must be 0 to 100, got %v", p)
	}
	return nil
}

// Fault is the built filter. It is immutable and safe for concurrent use
// as long as its random source is.
type Fault struct {
	rnd          func() float64
	delay        time.Duration // 0: no delay fault
	delayPercent float64
	status       int // 0: no abort fault
	abortPercent float64
}

// ServeHTTP delays r if it draws the delay, recording filters.FaultDelay;
// the wait ends early when r's context does, and the request then goes on
// all the same so that the router reports why. Then it answers r with the
// abort status (filters.FaultAbort) if it draws the abort, else calls
// next.
func (f *Fault) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if f.delay > 0 && 100*f.rnd() < f.delayPercent {
		filters.FromContext(r.Context()).AddFlags(filters.FaultDelay)
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if f.status != 0 && 100*f.rnd() < f.abortPercent {
		filters.Reply(w, r, f.status, filters.FaultAbort, "fault filter abort")
		return
	}
	next.ServeHTTP(w, r)
}
