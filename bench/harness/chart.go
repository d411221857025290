package harness

import (
	"math"
	"os"
	"strconv"

	"github.com/pillionmesh/pillion/bench/chart"
)

// WriteChart draws the fixed-rate load's latency percentiles, one bar per
// mode, to a PNG file at path.
func WriteChart(path string, r *Result, rows []Row) error {
	c := chart.Chart{
		Title:  "latency at " + strconv.Itoa(r.Config.Rate) + " req/s, 1 KB bodies, " + strconv.Itoa(r.Config.Conns) + " connections (median of " + strconv.Itoa(r.Config.Reps) + " runs)",
		Unit:   "ms",
		Groups: []string{"p50", "p90", "p99", "p99.9"},
		Note:   r.Machine.String() + ", " + r.Started.Format("2006-01-02"),
	}
	for _, mode := range Modes() {
		s := chart.Series{Name: mode}
		found := false
		for _, g := range c.Groups {
			v := math.NaN()
			if row, ok := find(rows, WorkloadRate, g); ok {
				if m, ok := row.Median[mode]; ok {
					v, found = m, true
				}
			}
			s.Values = append(s.Values, v)
		}
		if found {
			c.Series = append(c.Series, s)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := chart.Render(f, c); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
