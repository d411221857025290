// Package harness measures what a sidecar pair costs per hop, side by side
// with the direct path and an HAProxy pair, in the real topology: a client
// pod and a server pod (network namespaces on one node), capture installed
// with `pillion init`, the proxies running as UID 1337. Each run builds a
// fresh node for each mode, runs every workload, and removes the node.
package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// Config says what to measure and for how long.
type Config struct {
	Modes     []string      // of Modes(); empty: all
	Reps      int           // runs per mode; medians are taken over them
	Duration  time.Duration // of each fortio workload
	Rate      int           // requests per second of WorkloadRate
	Conns     int           // fortio's connections
	BulkBytes int64         // WorkloadBulk's size
	IdleConns int           // WorkloadIdle's connections
	Tools     Tools
	Log       io.Writer // progress; nil for none

	idleHeld int // IdleConns, or fewer if the open-file limit says so
}

// DefaultConfig is `make bench`'s: the workloads, three runs.
func DefaultConfig() Config {
	return Config{
		Modes: Modes(), Reps: 3, Duration: 10 * time.Second, Rate: 1000, Conns: 16,
		BulkBytes: 256 << 20, IdleConns: 10000,
	}
}

// Result is every figure of every run.
type Result struct {
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Config   RunConfig `json:"config"`
	Runs     []Run     `json:"runs"`
	Duration float64   `json:"seconds"`
}

// RunConfig is Config as recorded with the results.
type RunConfig struct {
	Reps      int    `json:"reps"`
	Duration  string `json:"duration"`
	Rate      int    `json:"rate"`
	Conns     int    `json:"conns"`
	BulkBytes int64  `json:"bulk_bytes"`
	IdleConns int    `json:"idle_conns"`
	// IdleConnsHeld is how many were really held: the open-file limit
	// may allow fewer; the figure is then scaled.
	IdleConnsHeld int `json:"idle_conns_held"`
}

// Run is one mode's figures in one repetition.
type Run struct {
	Mode   string  `json:"mode"`
	Rep    int     `json:"rep"`
	Values []Value `json:"values"`
}

// Measure measures every mode cfg.Reps times, interleaving the modes so that
// a noisy neighbour hurts them alike.
func Measure(cfg Config) (*Result, error) {
	if len(cfg.Modes) == 0 {
		cfg.Modes = Modes()
	}
	n, err := idleConns(cfg.IdleConns)
	if err != nil {
		return nil, err
	}
	if n < cfg.IdleConns {
		logf(cfg.Log, "the open-file limit allows %d idle connections, not %d: the idle figure is measured at %d and scaled to %d\n",
			n, cfg.IdleConns, n, cfg.IdleConns)
	}
	res := &Result{Machine: DescribeMachine(), Started: time.Now().UTC(), Config: RunConfig{
		Reps: cfg.Reps, Duration: cfg.Duration.String(), Rate: cfg.Rate, Conns: cfg.Conns,
		BulkBytes: cfg.BulkBytes, IdleConns: cfg.IdleConns, IdleConnsHeld: n,
	}}
	cfg.idleHeld = n
	for rep := 1; rep <= cfg.Reps; rep++ {
		for _, name := range cfg.Modes {
			logf(cfg.Log, "run %d/%d: %s\n", rep, cfg.Reps, name)
			vals, err := runOnce(cfg, name)
			if err != nil {
				return nil, fmt.Errorf("%s, run %d: %w", name, rep, err)
			}
			res.Runs = append(res.Runs, Run{Mode: name, Rep: rep, Values: vals})
		}
	}
	res.Duration = time.Since(res.Started).Seconds()
	return res, nil
}

// runOnce builds the topology for one mode, runs every workload and tears
// it all down, whatever happened.
func runOnce(cfg Config, name string) (vals []Value, err error) {
	m, err := newMode(name)
	if err != nil {
		return nil, err
	}
	s := &scope{log: cfg.Log}
	defer s.close()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = f
		}
	}()
	e, err := newEnv(s, cfg.Tools)
	if err != nil {
		return nil, err
	}
	if err := m.setup(e); err != nil {
		return nil, err
	}
	var (
		peaks []int64
		last  []proxy
	)
	for i, w := range workloads() {
		proxies, err := m.proxiesFor(e, w)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			now, err := sampleAll(proxies)
			if err != nil {
				return nil, err
			}
			for j, p := range proxies {
				vals = append(vals, Value{"idle", "rss, " + p.side + " proxy", "MB", "lower", mb(now[j].RSS)},
					Value{"idle", "anonymous rss, " + p.side + " proxy", "MB", "lower", mb(now[j].Anon)})
			}
		}
		logf(cfg.Log, "  %s\n", w.name)
		v, err := w.run(e, cfg, proxies)
		if err != nil {
			if d, ok := m.(interface{ diagnose() string }); ok {
				err = fmt.Errorf("%w%s", err, d.diagnose())
			}
			return nil, err
		}
		vals = append(vals, v...)
		if w, ok := m.(interface{ warnings() string }); ok && anyFailed(v) {
			logf(cfg.Log, "%s", w.warnings())
		}
		// HAProxy restarts between workloads: the peak is the largest of
		// each process's own.
		now, err := sampleAll(proxies)
		if err != nil {
			return nil, err
		}
		if peaks == nil {
			peaks = make([]int64, len(proxies))
		}
		for j := range proxies {
			peaks[j] = max(peaks[j], now[j].HWM)
		}
		last = proxies
	}
	for j, p := range last {
		vals = append(vals, Value{"all", "peak rss, " + p.side + " proxy", "MB", "lower", mb(peaks[j])})
	}
	return vals, nil
}

// anyFailed reports whether a workload's figures count failed connections.
func anyFailed(vals []Value) bool {
	for _, v := range vals {
		if v.Metric == "failed" && v.Value > 0 {
			return true
		}
	}
	return false
}

// newEnv makes the node, the two pods and the server pod's applications.
func newEnv(s *scope, tools Tools) (*env, error) {
	node := testpod.NewNode(s)
	e := &env{t: s, tools: tools, client: node.AddPod(s, "client"), server: node.AddPod(s, "server")}
	dir, err := os.MkdirTemp("", "pillion-bench-")
	if err != nil {
		return nil, err
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	e.dir = dir
	srv := e.server.Start(s, testpod.Root, tools.Fortio, "server", "-http-port", fmt.Sprint(httpPort),
		"-grpc-port", fmt.Sprint(grpcPort), "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled")
	for _, port := range []uint16{httpPort, grpcPort} {
		if err := waitListening(e.server, port, srv); err != nil {
			return nil, fmt.Errorf("fortio server: %w", err)
		}
	}
	if err := serveSink(s, e.server); err != nil {
		return nil, err
	}
	if e.holder, err = serveHolder(s, e.server); err != nil {
		return nil, err
	}
	return e, nil
}

// scope is a testpod.Cleaner for one run: cleanups run at close, and
// Fatalf aborts the run (not the program) with an error.
type scope struct {
	mu       sync.Mutex
	cleanups []func()
	log      io.Writer
}

type fatal struct{ msg string }

func (f fatal) Error() string { return f.msg }

func (s *scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}
func (s *scope) Helper()                         {}
func (s *scope) Logf(format string, args ...any) { logf(s.log, format+"\n", args...) }
func (s *scope) Fatalf(format string, args ...any) {
	panic(fatal{fmt.Sprintf(format, args...)})
}

func (s *scope) close() {
	s.mu.Lock()
	fs := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func logf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format, args...)
	}
}

// runCmd runs a command on this machine; the error carries its output.
func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}
