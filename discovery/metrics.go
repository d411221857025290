package discovery

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// serverMetrics are the Watch server's. The index's own (objects held,
// informer events) are registered by NewIndex.
type serverMetrics struct {
	streams       prometheus.Gauge
	subscriptions prometheus.Gauge
	updates       *prometheus.CounterVec
	delay         prometheus.Histogram
	lookups       prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pillion_discovery_streams",
			Help: "Watch streams open: about one per connected sidecar.",
		}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pillion_discovery_subscriptions",
			Help: "Destinations subscribed to, over all streams.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pillion_discovery_updates_sent_total",
			Help: "Destination states sent, by reason: subscribe (the answer to a subscription) or change (its state changed).",
		}, []string{"reason"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pillion_discovery_update_delay_seconds",
			Help:    "Time from the informer event that changed a destination to its new state being sent (coalescing included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		lookups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pillion_discovery_lookups_total",
			Help: "Destination states computed from the index; one computation serves every stream subscribed to the destination.",
		}),
	}
	for _, c := range []prometheus.Collector{m.streams, m.subscriptions, m.updates, m.delay, m.lookups} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("discovery: metrics: %w", err)
		}
	}
	return m, nil
}
