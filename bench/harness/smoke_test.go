package harness

import (
	"bytes"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	sidecar "github.com/pillionmesh/pillion/proxy"
)

// fortioBin is $FORTIO (make test sets it), else the cached one.
func fortioBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("FORTIO")
	if bin == "" {
		root, err := meshtest.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(root, ".cache", "tools", "fortio")
	}
	if _, err := os.Stat(bin); err != nil {
		msg := "the bench smoke test needs fortio at " + bin + ": `make test` builds it"
		if privileged.InCI() {
			t.Fatal(msg + " (CI=true: failing instead of skipping)")
		}
		t.Skip(msg)
	}
	return bin
}

// TestSmoke runs the whole harness briefly, every mode and workload, so
// that `make bench` cannot rot: each figure must come out of the run, the
// report and the chart must be written, and no namespace may be left.
func TestSmoke(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv", "haproxy")
	fortio := fortioBin(t)
	root, err := meshtest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, remove, err := meshtest.Build(root, "lean") // the sidecar image's build
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	haproxy, _ := exec.LookPath("haproxy")
	var log bytes.Buffer
	cfg := Config{
		Modes: Modes(), Reps: 1, Duration: time.Second, Rate: 200, Conns: 4,
		BulkBytes: 8 << 20, IdleConns: 100,
		Tools: Tools{Pillion: bin, Fortio: fortio, HAProxy: haproxy}, Log: &log,
	}
	res, err := Measure(cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "pilt-"+itoaPID()) {
		t.Errorf("namespaces left behind:\n%s", out)
	}

	rows := Summarize(res)
	for _, mode := range Modes() {
		for _, w := range workloads() {
			row, ok := find(rows, w.name, "throughput")
			if w.name == WorkloadIdle {
				row, ok = find(rows, w.name, "rss, client proxy")
				if mode == Direct {
					continue
				}
			}
			if !ok || row.Median[mode] <= 0 {
				t.Errorf("%s, %s: no figure (%+v)", mode, w.name, row)
			}
		}
		if mode == Direct {
			continue
		}
		for _, side := range []string{"client", "server"} {
			for _, m := range []struct{ workload, metric string }{
				{WorkloadRate, "cpu per 1000 req, " + side + " proxy"},
				{"idle", "rss, " + side + " proxy"},
				{"idle", "anonymous rss, " + side + " proxy"},
				{"all", "peak rss, " + side + " proxy"},
			} {
				if row, ok := find(rows, m.workload, m.metric); !ok || row.Median[mode] <= 0 {
					t.Errorf("%s: %s %s = %v", mode, m.workload, m.metric, row.Median[mode])
				}
			}
		}
	}
	checkIdle(t, rows, cfg.IdleConns)
	for _, w := range []string{WorkloadRate, WorkloadMax, WorkloadGRPC, WorkloadNewConn} {
		if row, _ := find(rows, w, "errors"); row.Median[Pillion] != 0 || row.Median[HAProxy] != 0 {
			t.Errorf("%s: errors %v", w, row.Median)
		}
	}
	if ts := Targets(rows); len(ts) != 15 {
		t.Errorf("%d targets checked, want 15: %+v", len(ts), ts)
	}
	var table bytes.Buffer
	WriteTable(&table, res, rows, Modes())
	WriteTargets(&table, Targets(rows))
	t.Logf("%s\n%s", log.String(), table.String())
	if !strings.Contains(table.String(), "pillion/haproxy") || !strings.Contains(table.String(), res.Machine.CPU) {
		t.Errorf("table:\n%s", table.String())
	}
	pngPath := filepath.Join(t.TempDir(), "latency.png")
	if err := WriteChart(pngPath, res, rows); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("chart: %v", err)
	}
}

// checkIdle checks the idle connections' figures: every mode opened all n
// at once and none failed; each pillion sidecar reports its handshakes in
// flight, bounded by --max-handshakes, and HAProxy has no such figure.
func checkIdle(t *testing.T, rows []Row, n int) {
	t.Helper()
	for _, mode := range Modes() {
		opened, _ := find(rows, WorkloadIdle, "opened at once")
		failed, ok := find(rows, WorkloadIdle, "failed")
		if opened.Median[mode] != float64(n) || !ok || failed.Median[mode] != 0 {
			t.Errorf("%s, %s: opened at once %v, failed %v; want %d and 0", mode, WorkloadIdle,
				opened.Median[mode], failed.Median[mode], n)
		}
		for _, side := range []string{"client", "server"} {
			peak, _ := find(rows, WorkloadIdle, "handshakes in flight, peak, "+side+" proxy")
			v, ok := peak.Median[mode]
			switch {
			case mode == Pillion && (!ok || v <= 0 || v > sidecar.DefaultMaxHandshakes):
				t.Errorf("pillion, %s proxy: handshakes in flight, peak %v; want 1 to %d", side, v, sidecar.DefaultMaxHandshakes)
			case mode != Pillion && ok:
				t.Errorf("%s, %s proxy: handshakes in flight, peak %v; want none (pillion's metric)", mode, side, v)
			}
		}
	}
}

func itoaPID() string { return strconv.Itoa(os.Getpid()) }
