package harness

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"

	sidecar "github.com/pillionmesh/pillion/proxy"
)

// Row is one figure's medians across the runs, by mode.
type Row struct {
	Workload string             `json:"workload"`
	Metric   string             `json:"metric"`
	Unit     string             `json:"unit"`
	Better   string             `json:"better"`
	Median   map[string]float64 `json:"median"`
	Runs     map[string]int     `json:"runs"`
}

// Summarize takes the median of each figure over the runs of each mode,
// in the order the figures were first measured.
func Summarize(r *Result) []Row {
	type key struct{ w, m string }
	var order []key
	rows := map[key]*Row{}
	values := map[key]map[string][]float64{}
	for _, run := range r.Runs {
		for _, v := range run.Values {
			k := key{v.Workload, v.Metric}
			if rows[k] == nil {
				order = append(order, k)
				rows[k] = &Row{Workload: v.Workload, Metric: v.Metric, Unit: v.Unit, Better: v.Better,
					Median: map[string]float64{}, Runs: map[string]int{}}
				values[k] = map[string][]float64{}
			}
			values[k][run.Mode] = append(values[k][run.Mode], v.Value)
		}
	}
	out := make([]Row, 0, len(order))
	for _, k := range order {
		row := rows[k]
		for mode, vs := range values[k] {
			row.Median[mode] = median(vs)
			row.Runs[mode] = len(vs)
		}
		out = append(out, *row)
	}
	return out
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// find returns the row of workload's metric, if measured.
func find(rows []Row, workload, metric string) (Row, bool) {
	i := slices.IndexFunc(rows, func(r Row) bool { return r.Workload == workload && r.Metric == metric })
	if i < 0 {
		return Row{}, false
	}
	return rows[i], true
}

// WriteTable prints the medians side by side with the ratios of pillion
// to direct and to haproxy.
func WriteTable(w io.Writer, r *Result, rows []Row, modes []string) {
	fmt.Fprintf(w, "pillion bench: %s\n", r.Machine)
	fmt.Fprintf(w, "%s, pillion %s, %s; medians of %d runs per mode, %s per load\n\n",
		r.Started.Format("2006-01-02 15:04 UTC"), r.Machine.Pillion, r.Machine.HAProxy, r.Config.Reps, r.Config.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"workload", "metric", "unit"}
	head = append(head, modes...)
	head = append(head, "pillion/direct", "pillion/haproxy", "")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	last := ""
	for _, row := range rows {
		wl := row.Workload
		if wl == last {
			wl = ""
		}
		last = row.Workload
		cells := []string{wl, row.Metric, row.Unit}
		for _, m := range modes {
			cells = append(cells, cell(row, m))
		}
		cells = append(cells, ratio(row, Pillion, Direct), ratio(row, Pillion, HAProxy), "")
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

func cell(row Row, mode string) string {
	v, ok := row.Median[mode]
	if !ok {
		return "-"
	}
	return format(v)
}

func ratio(row Row, a, b string) string {
	va, okA := row.Median[a]
	vb, okB := row.Median[b]
	if !okA || !okB || vb == 0 {
		return "-"
	}
	return format(va/vb) + "x"
}

// format prints a figure with three significant digits.
func format(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Target is one of the targets, checked against the medians.
type Target struct {
	Name   string `json:"name"`
	Met    bool   `json:"met"`
	Detail string `json:"detail"`
}

// Targets checks the targets. A target whose figures are missing
// (a mode not run) is left out.
func Targets(rows []Row) []Target {
	var ts []Target
	get := func(workload, metric, mode string) (float64, bool) {
		row, ok := find(rows, workload, metric)
		if !ok {
			return 0, false
		}
		v, ok := row.Median[mode]
		return v, ok
	}
	for _, p := range []string{"p50", "p99"} {
		d, ok1 := get(WorkloadRate, p, Direct)
		pl, ok2 := get(WorkloadRate, p, Pillion)
		h, ok3 := get(WorkloadRate, p, HAProxy)
		if ok1 && ok2 && ok3 {
			added, haAdded := pl-d, h-d
			ts = append(ts, Target{
				Name:   fmt.Sprintf("%s latency added over direct at %s ≤ HAProxy's", p, WorkloadRate),
				Met:    added <= haAdded,
				Detail: fmt.Sprintf("pillion +%s ms, haproxy +%s ms", format(added), format(haAdded)),
			})
		}
	}
	for _, side := range []string{"client", "server"} {
		m := "cpu per 1000 req, " + side + " proxy"
		pl, ok1 := get(WorkloadRate, m, Pillion)
		h, ok2 := get(WorkloadRate, m, HAProxy)
		if ok1 && ok2 && h > 0 {
			ts = append(ts, Target{
				Name:   "CPU per 1000 requests, " + side + " proxy ≤ 1.2× HAProxy's",
				Met:    pl <= 1.2*h,
				Detail: fmt.Sprintf("pillion %s ms, haproxy %s ms: %sx", format(pl), format(h), format(pl/h)),
			})
		}
	}
	if pl, ok1 := get(WorkloadMax, "throughput", Pillion); ok1 {
		if h, ok2 := get(WorkloadMax, "throughput", HAProxy); ok2 && h > 0 {
			ts = append(ts, Target{Name: "maximum throughput ≥ 1.0× the HAProxy pair", Met: pl >= h,
				Detail: fmt.Sprintf("pillion %s req/s, haproxy %s req/s: %sx", format(pl), format(h), format(pl/h))})
		}
	}
	if pl, ok1 := get(WorkloadBulk, "throughput", Pillion); ok1 {
		if d, ok2 := get(WorkloadBulk, "throughput", Direct); ok2 && d > 0 {
			ts = append(ts, Target{Name: "TCP bulk ≥ 0.95× direct", Met: pl >= 0.95*d,
				Detail: fmt.Sprintf("pillion %s MB/s, direct %s MB/s: %sx", format(pl), format(d), format(pl/d))})
		}
	}
	for _, side := range []string{"client", "server"} {
		for _, lim := range []struct {
			workload, label string
			mb              float64
		}{{"idle", "idle", 20}, {WorkloadRate, "at the fixed rate", 40}, {WorkloadIdle, "with the idle connections", 150}} {
			if v, ok := get(lim.workload, "rss, "+side+" proxy", Pillion); ok {
				ts = append(ts, Target{Name: fmt.Sprintf("RSS %s, %s proxy ≤ %s MB", lim.label, side, format(lim.mb)),
					Met: v <= lim.mb, Detail: fmt.Sprintf("pillion %s MB", format(v))})
			}
		}
	}
	return append(ts, idleTargets(get)...)
}

// idleTargets checks the idle connections opened at once: all reach the
// server, and each sidecar bounds the mTLS handshakes in flight.
func idleTargets(get func(workload, metric, mode string) (float64, bool)) []Target {
	var ts []Target
	if f, ok := get(WorkloadIdle, "failed", Pillion); ok {
		n, _ := get(WorkloadIdle, "opened at once", Pillion)
		ts = append(ts, Target{Name: "idle connections opened at once all reach the server", Met: f == 0,
			Detail: fmt.Sprintf("pillion %s of %s failed", format(f), format(n))})
	}
	for _, side := range []string{"client", "server"} {
		if peak, ok := get(WorkloadIdle, "handshakes in flight, peak, "+side+" proxy", Pillion); ok {
			queued, _ := get(WorkloadIdle, "handshakes queued, "+side+" proxy", Pillion)
			timeouts, _ := get(WorkloadIdle, "handshakes timed out queued, "+side+" proxy", Pillion)
			ts = append(ts, Target{
				Name: fmt.Sprintf("mTLS handshakes in flight, %s proxy ≤ --max-handshakes (%d)", side, sidecar.DefaultMaxHandshakes),
				Met:  peak <= sidecar.DefaultMaxHandshakes,
				Detail: fmt.Sprintf("pillion peak %s; %s queued while the idle connections opened, %s of them timed out",
					format(peak), format(queued), format(timeouts)),
			})
		}
	}
	return ts
}

// WriteTargets prints each target, met or not.
func WriteTargets(w io.Writer, ts []Target) {
	fmt.Fprintln(w, "\ntargets (pillion, from the medians above):")
	for _, t := range ts {
		mark := "met    "
		if !t.Met {
			mark = "NOT met"
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", mark, t.Name, t.Detail)
	}
}
