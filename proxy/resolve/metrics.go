package resolve

import "github.com/prometheus/client_golang/prometheus"

// Collectors returns the resolver's metrics, read from its Stats when
// scraped: the stream's state and what came over it.
func (r *Resolver) Collectors() []prometheus.Collector {
	counter := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pillion_discovery_client_" + name, Help: help},
			func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter("connects_total", "Streams to discovery opened (answered at least once).", r.stats.Connects.Load),
		counter("disconnects_total", "Streams to discovery lost after they opened.", r.stats.Disconnects.Load),
		counter("updates_total", "Answers of discovery taken.", r.stats.Updates.Load),
		counter("invalid_answers_total", "Answers of discovery refused as invalid (their destinations fail with no healthy upstream).", r.stats.Invalid.Load),
		counter("first_answer_timeouts_total", "First lookups of a destination that gave up waiting for discovery's answer (the destination went as it is).", r.stats.FirstAnswerTimeouts.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pillion_discovery_client_connected", Help: "1 while the stream to discovery is open."},
			func() float64 {
				if r.Connected() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pillion_discovery_client_destinations", Help: "Destinations asked of discovery and held (those the application used)."},
			func() float64 {
				n := 0
				r.dests.Range(func(any, any) bool { n++; return true })
				return float64(n)
			}),
	}
}
