package balance

import (
	"math"
	"time"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Endpoint is one endpoint of the destination as discovery describes it.
type Endpoint struct {
	upstream.Endpoint
	// Weight is the endpoint's relative share of the traffic; 0 is read as
	// 1. Between endpoints of equal latency and load, Pick chooses in
	// proportion to Weight; under load, an endpoint of weight w is as
	// loaded with w requests outstanding as one of weight 1 is with one.
	Weight uint32
	// Zone is the topology zone of the endpoint's node, if known. It is
	// reported by Snapshot; Pick does not use it.
	Zone string
	// Ready, Serving and Terminating are the EndpointSlice conditions.
	// Only an endpoint Ready and not Terminating takes new requests;
	// Serving is reported by Snapshot only.
	Ready, Serving, Terminating bool
}

// takes says whether e may take new requests, ejections aside.
func (e *Endpoint) takes() bool { return e.Ready && !e.Terminating }

// endpoint is the state the Balancer keeps of one endpoint. Its fields are
// guarded by the Balancer's mutex.
type endpoint struct {
	Endpoint // as last given to Update, Weight at least 1

	// removed: a later Update dropped the endpoint; Dones still in flight
	// only settle its counts.
	removed bool

	ewma     float64   // peak-EWMA latency estimate in nanoseconds, as of at; 0 until observed
	at       time.Time // when ewma was set: the endpoint added, or observed
	observed bool      // a response has set ewma

	lost               int    // pairs lost in a row to a cheaper endpoint
	pending            int    // picks whose Done has not been called
	requests, failures uint64 // picks, and Dones that failed

	consecutive  int       // failures in a row since the last success or ejection
	ejections    int       // the last ejection's multiplier: ejections counted so far
	ejectedUntil time.Time // end of the current or last ejection; zero: never ejected
}

// estimate is the latency estimate at now: the EWMA decayed toward zero
// since it was last set, as Linkerd's does when it is read. An endpoint that
// is not picked (it was slow, or failed) thereby looks cheaper as time
// passes, and is tried again once it looks cheaper than the others.
func (e *endpoint) estimate(now time.Time, decay float64) float64 {
	elapsed := float64(now.Sub(e.at))
	if elapsed <= 0 {
		return e.ewma
	}
	return e.ewma * math.Exp(-elapsed/decay)
}

// cost is Pick's measure: the latency estimate (at least floor), more for
// each request outstanding, less so the larger the weight. An endpoint due
// a probe (it lost probeAfter pairs in a row) is compared at the floor.
func (e *endpoint) cost(now time.Time, decay, floor float64, probeAfter int) float64 {
	est := floor
	if e.lost < probeAfter {
		est = max(e.estimate(now, decay), floor)
	}
	return est * (1 + float64(e.pending)/float64(e.Weight))
}

// observe adds a latency to the peak-EWMA: the first sets it, as does the
// answer to a probe (replace: what the estimate held made the endpoint lose
// its pairs, and is not evidence any more); a latency above the estimate becomes the
// estimate (the peak); one below it is averaged in, weighted by how long
// ago the estimate was set.
func (e *endpoint) observe(now time.Time, latency time.Duration, decay float64, replace bool) {
	rtt := float64(max(latency, 0))
	if rtt > e.ewma || !e.observed || replace {
		e.observed = true
		e.ewma = rtt
	} else {
		w := math.Exp(-max(float64(now.Sub(e.at)), 0) / decay)
		e.ewma = e.ewma*w + rtt*(1-w)
	}
	e.at = now
}

// ejected says whether e is ejected at now.
func (e *endpoint) ejected(now time.Time) bool {
	return !e.ejectedUntil.IsZero() && now.Before(e.ejectedUntil)
}

// eject takes e out of the eligible endpoints from now on, for the
// ejection's share of cfg's times.
func (e *endpoint) eject(now time.Time, cfg *Config) {
	n := e.ejections
	if !e.ejectedUntil.IsZero() {
		served := now.Sub(e.ejectedUntil) / cfg.BaseEjection
		n -= int(min(served, time.Duration(n)))
	}
	// The n-th ejection lasts n×BaseEjection up to MaxEjection; n need not
	// grow past the first n that reaches it.
	limit := int((cfg.MaxEjection + cfg.BaseEjection - 1) / cfg.BaseEjection)
	n = min(n+1, limit)
	e.ejections = n
	e.ejectedUntil = now.Add(min(time.Duration(n)*cfg.BaseEjection, cfg.MaxEjection))
	e.consecutive = 0
}
