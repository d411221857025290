package chart_test

import (
	"io"
	"log"
	"math"

	"github.com/pillionmesh/pillion/bench/chart"
)

// A latency chart for three modes. The harness writes to a file; this
// example writes to io.Discard.
func ExampleRender() {
	c := chart.Chart{
		Title:  "HTTP/1.1 request latency, 200 rps",
		Unit:   "ms",
		Note:   "2 cores, 2025-01-01",
		Groups: []string{"p50", "p90", "p99", "p99.9"},
		Series: []chart.Series{
			{Name: "direct", Values: []float64{0.21, 0.35, 0.8, 1.9}},
			{Name: "pillion", Values: []float64{0.34, 0.52, 1.2, 2.6}},
			{Name: "haproxy", Values: []float64{0.31, 0.49, 1.1, math.NaN()}}, // p99.9 not measured: "n/a"
		},
	}
	if err := chart.Render(io.Discard, c); err != nil {
		log.Fatal(err)
	}
	// Output:
}
