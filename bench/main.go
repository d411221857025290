// Command bench is `make bench`: it measures the pillion sidecar pair side
// by side with the direct path and an HAProxy pair, prints the medians with
// their ratios, and writes them as JSON with a latency chart under
// bench/results/. It needs root (network namespaces, iptables).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/bench/harness"
	"github.com/pillionmesh/pillion/internal/meshtest"
)

func main() {
	cfg := harness.DefaultConfig()
	modes := flag.String("modes", strings.Join(harness.Modes(), ","), "modes to measure, comma separated")
	flag.IntVar(&cfg.Reps, "reps", cfg.Reps, "runs per mode; the table shows medians")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of each HTTP and gRPC load")
	flag.IntVar(&cfg.Rate, "rate", cfg.Rate, "requests per second of the fixed-rate load")
	flag.IntVar(&cfg.Conns, "conns", cfg.Conns, "connections of the HTTP and gRPC loads")
	flag.Int64Var(&cfg.BulkBytes, "bulk-bytes", cfg.BulkBytes, "bytes of the TCP bulk transfer")
	flag.IntVar(&cfg.IdleConns, "idle-conns", cfg.IdleConns, "connections held open for the idle-memory figure")
	fortio := flag.String("fortio", os.Getenv("FORTIO"), "fortio binary (default: $FORTIO, else fortio on PATH)")
	out := flag.String("out", "bench/results", "folder for the JSON results and the chart")
	flag.Parse()
	cfg.Modes = strings.Split(*modes, ",")
	cfg.Log = os.Stderr
	if os.Geteuid() != 0 {
		fail("bench needs root: it creates network namespaces and iptables rules. Run: sudo make bench")
	}
	if err := run(cfg, *fortio, *out); err != nil {
		fail("bench: %v", err)
	}
}

func run(cfg harness.Config, fortio, out string) error {
	root, err := meshtest.ModuleRoot()
	if err != nil {
		return err
	}
	bin, remove, err := meshtest.Build(root, "lean") // the sidecar image's build
	if err != nil {
		return err
	}
	defer remove()
	cfg.Tools.Pillion = bin
	if cfg.Tools.Fortio, err = lookPath(fortio, "fortio"); err != nil {
		return err
	}
	if cfg.Tools.HAProxy, err = lookPath("", "haproxy"); err != nil {
		return err
	}
	res, err := harness.Measure(cfg)
	if err != nil {
		return err
	}
	rows := harness.Summarize(res)
	targets := harness.Targets(rows)
	harness.WriteTable(os.Stdout, res, rows, cfg.Modes)
	harness.WriteTargets(os.Stdout, targets)
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	return save(out, res, rows, targets)
}

// save writes results-<time>.json, latest.json and latency.png.
func save(dir string, res *harness.Result, rows []harness.Row, targets []harness.Target) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	doc, err := json.MarshalIndent(struct {
		*harness.Result
		Summary []harness.Row    `json:"summary"`
		Targets []harness.Target `json:"targets"`
	}{res, rows, targets}, "", "  ")
	if err != nil {
		return err
	}
	name := "results-" + res.Started.Format("20060102-150405") + ".json"
	for _, n := range []string{name, "latest.json"} {
		if err := os.WriteFile(filepath.Join(dir, n), append(doc, '\n'), 0o644); err != nil {
			return err
		}
	}
	png := filepath.Join(dir, "latency.png")
	if err := harness.WriteChart(png, res, rows); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s, %s and %s (%s)\n", filepath.Join(dir, name), filepath.Join(dir, "latest.json"), png,
		time.Duration(res.Duration*float64(time.Second)).Round(time.Second))
	return nil
}

func lookPath(given, name string) (string, error) {
	if given != "" {
		return given, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s: not found (make bench installs it)", name)
	}
	return p, nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
