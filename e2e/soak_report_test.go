package e2e

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/bench/chart"
)

// soakSeries names the three quantities sampled, in the order of the
// table and the chart's panels.
var soakSeries = [...]struct {
	name  string
	value func(soakSample) float64
}{
	{"RSS MiB", func(s soakSample) float64 { return float64(s.rss) / (1 << 20) }},
	{"goroutines", func(s soakSample) float64 { return float64(s.goroutines) }},
	{"open fds", func(s soakSample) float64 { return float64(s.fds) }},
}

// flatness is how far a series may move after warm-up and still be flat:
// the larger of rel × its post-warm-up level and abs (in its own unit).
// Both the change from the post-warm-up level to the final level and the
// fitted slope's rise over the window must stay within it.
type flatness struct {
	rel float64
	abs [len(soakSeries)]float64
}

// soakVerdict is one series of one sidecar after warm-up.
type soakVerdict struct {
	sidecar, series string
	samples         int
	base, final     float64 // medians of the first and last tenth after warm-up
	slope           float64 // per minute, least squares over every sample after warm-up
	rise            float64 // slope × the window's length
	allowed         float64
	ok              bool
}

// analyse judges each series of p's samples taken from warmup on. It is
// an error to have fewer than 6 samples there.
func analyse(p *sidecarProbe, warmup time.Duration, f flatness) ([]soakVerdict, error) {
	var after []soakSample
	for _, s := range p.samples {
		if s.at >= warmup {
			after = append(after, s)
		}
	}
	if len(after) < 6 {
		return nil, fmt.Errorf("%s: %d samples after the %v warm-up; want at least 6", p.name, len(after), warmup)
	}
	tenth := max(3, len(after)/10)
	window := (after[len(after)-1].at - after[0].at).Minutes()
	var out []soakVerdict
	for i, ser := range soakSeries {
		v := soakVerdict{sidecar: p.name, series: ser.name, samples: len(after)}
		xs, ys := make([]float64, len(after)), make([]float64, len(after))
		for j, s := range after {
			xs[j], ys[j] = s.at.Minutes(), ser.value(s)
		}
		v.base, v.final = medianOf(ys[:tenth]), medianOf(ys[len(ys)-tenth:])
		v.slope = slope(xs, ys)
		v.rise = v.slope * window
		v.allowed = max(f.rel*v.base, f.abs[i])
		v.ok = math.Abs(v.final-v.base) <= v.allowed && math.Abs(v.rise) <= v.allowed
		out = append(out, v)
	}
	return out, nil
}

func medianOf(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy = sx+xs[i], sy+ys[i]
		sxx, sxy = sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// soakTable is the verdicts as a table.
func soakTable(vs []soakVerdict) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-11s %10s %10s %8s %11s %10s  %s\n", "sidecar", "series", "post-warm", "final", "change", "slope/min", "allowed±", "verdict")
	for _, v := range vs {
		verdict := "flat"
		if !v.ok {
			verdict = "NOT FLAT"
		}
		change := math.NaN()
		if v.base != 0 {
			change = 100 * (v.final - v.base) / v.base
		}
		fmt.Fprintf(&b, "%-12s %-11s %10.2f %10.2f %+7.1f%% %+11.3f %10.2f  %s\n",
			v.sidecar, v.series, v.base, v.final, change, v.slope, v.allowed, verdict)
	}
	return b.String()
}

// writeSoakChart draws each series of each probe over time, one panel per
// series and one line per sidecar, with the warm-up's end marked, to
// dir/soak.png, and writes the samples to dir/soak.csv. It returns the
// PNG's path.
func writeSoakChart(dir, title, note string, warmup time.Duration, probes []*sidecarProbe) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("soak: %w", err)
	}
	c := chart.Lines{Title: title, Note: note, XUnit: "s", Marks: []chart.Mark{{X: warmup.Seconds(), Label: "warm-up ends"}}}
	var csv strings.Builder
	csv.WriteString("sidecar,seconds,rss_bytes,goroutines,open_fds\n")
	for _, p := range probes {
		c.Series = append(c.Series, p.name)
		for _, s := range p.samples {
			fmt.Fprintf(&csv, "%s,%.3f,%d,%d,%d\n", p.name, s.at.Seconds(), s.rss, s.goroutines, s.fds)
		}
	}
	for _, ser := range soakSeries {
		panel := chart.Panel{Unit: ser.name}
		for _, p := range probes {
			line := make([]chart.Point, 0, len(p.samples))
			for _, s := range p.samples {
				line = append(line, chart.Point{X: s.at.Seconds(), Y: ser.value(s)})
			}
			panel.Lines = append(panel.Lines, line)
		}
		c.Panels = append(c.Panels, panel)
	}
	png := filepath.Join(dir, "soak.png")
	f, err := os.Create(png)
	if err != nil {
		return "", fmt.Errorf("soak: %w", err)
	}
	err = chart.RenderLines(f, c)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "soak.csv"), []byte(csv.String()), 0o644)
	}
	if err != nil {
		return "", fmt.Errorf("soak: writing the chart: %w", err)
	}
	return png, nil
}
