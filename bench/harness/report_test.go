package harness

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMedianAndSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	res := &Result{Runs: []Run{
		{Mode: Direct, Rep: 1, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 1000}}},
		{Mode: Pillion, Rep: 1, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 900}}},
		{Mode: Direct, Rep: 2, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 3000}}},
		{Mode: Pillion, Rep: 2, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 970}}},
		{Mode: Direct, Rep: 3, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 1010}}},
		{Mode: Pillion, Rep: 3, Values: []Value{{WorkloadBulk, "throughput", "MB/s", "higher", 950}}},
	}}
	rows := Summarize(res)
	if len(rows) != 1 || rows[0].Median[Direct] != 1010 || rows[0].Median[Pillion] != 950 || rows[0].Runs[Pillion] != 3 {
		t.Fatalf("rows %+v", rows)
	}
	ts := Targets(rows)
	if len(ts) != 1 || ts[0].Met || ts[0].Detail != "pillion 950 MB/s, direct 1010 MB/s: 0.941x" {
		t.Errorf("targets %+v, want the bulk target not met at 0.941x", ts)
	}
}

// TestTargets checks each target's arithmetic on figures where the answer
// is known.
func TestTargets(t *testing.T) {
	row := func(w, m string, vals map[string]float64) Row { return Row{Workload: w, Metric: m, Median: vals} }
	rows := []Row{
		row(WorkloadRate, "p50", map[string]float64{Direct: 0.5, Pillion: 0.9, HAProxy: 1.0}),
		row(WorkloadRate, "p99", map[string]float64{Direct: 1, Pillion: 3, HAProxy: 2}),
		row(WorkloadRate, "cpu per 1000 req, client proxy", map[string]float64{Pillion: 60, HAProxy: 50}),
		row(WorkloadRate, "cpu per 1000 req, server proxy", map[string]float64{Pillion: 61, HAProxy: 50}),
		row(WorkloadMax, "throughput", map[string]float64{Pillion: 100, HAProxy: 100}),
		row("idle", "rss, client proxy", map[string]float64{Pillion: 20}),
		row(WorkloadIdle, "rss, server proxy", map[string]float64{Pillion: 151}),
	}
	got := map[string]bool{}
	for _, tg := range Targets(rows) {
		got[tg.Name] = tg.Met
	}
	want := map[string]bool{
		"p50 latency added over direct at http-1k-rate ≤ HAProxy's": true,  // +0.4 vs +0.5
		"p99 latency added over direct at http-1k-rate ≤ HAProxy's": false, // +2 vs +1
		"CPU per 1000 requests, client proxy ≤ 1.2× HAProxy's":      true,  // 1.2x exactly
		"CPU per 1000 requests, server proxy ≤ 1.2× HAProxy's":      false, // 1.22x
		"maximum throughput ≥ 1.0× the HAProxy pair":                true,
		"RSS idle, client proxy ≤ 20.0 MB":                          true,
		"RSS with the idle connections, server proxy ≤ 150 MB":      false,
	}
	if len(got) != len(want) {
		t.Errorf("targets %v, want %v", got, want)
	}
	for name, met := range want {
		if m, ok := got[name]; !ok || m != met {
			t.Errorf("%s: met %v (present %v), want %v", name, m, ok, met)
		}
	}
}

func TestWriteTable(t *testing.T) {
	res := &Result{Started: time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC), Config: RunConfig{Reps: 3, Duration: "10s"}}
	rows := []Row{{Workload: WorkloadBulk, Metric: "throughput", Unit: "MB/s", Median: map[string]float64{Direct: 1000, Pillion: 950, HAProxy: 500}}}
	var b bytes.Buffer
	WriteTable(&b, res, rows, Modes())
	fields := strings.Fields(strings.Split(b.String(), "\n")[4])
	if want := []string{"tcp-bulk", "throughput", "MB/s", "1000", "950", "500", "0.95x", "1.90x"}; strings.Join(fields, " ") != strings.Join(want, " ") {
		t.Errorf("row %q, want %q\n%s", fields, want, b.String())
	}
}

// TestSample reads this process's own usage: CPU grows as it works.
func TestSample(t *testing.T) {
	before, err := sample(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(100 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	after, err := sample(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU <= before.CPU || after.RSS <= 0 || after.HWM < after.RSS {
		t.Errorf("before %+v, after %+v", before, after)
	}
}
