package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// The server pod's applications.
const (
	httpPort = 8080 // fortio's HTTP echo
	grpcPort = 8079 // fortio's gRPC ping and health
	bulkPort = 9000 // a sink that counts bytes
	idlePort = 9001 // holds connections open
)

// Protocols a workload speaks, so that a proxy configured per workload
// (HAProxy) can be configured for it.
const (
	protoHTTP1 = "http1"
	protoH2C   = "h2c"
	protoTCP   = "tcp"
)

// workload is one measurement, run from the client pod.
type workload struct {
	name  string
	port  uint16
	proto string
	run   func(e *env, cfg Config, proxies []proxy) ([]Value, error)
}

// Value is one figure of one run.
type Value struct {
	Workload string  `json:"workload"`
	Metric   string  `json:"metric"`
	Unit     string  `json:"unit"`
	Better   string  `json:"better"` // "lower" or "higher"
	Value    float64 `json:"value"`
}

// Workload names.
const (
	WorkloadRate    = "http-1k-rate"
	WorkloadMax     = "http-1k-max"
	WorkloadGRPC    = "grpc-unary"
	WorkloadNewConn = "http-new-conn"
	WorkloadBulk    = "tcp-bulk"
	WorkloadIdle    = "idle-conns"
)

func workloads() []workload {
	return []workload{
		{WorkloadRate, httpPort, protoHTTP1, func(e *env, c Config, p []proxy) ([]Value, error) {
			return fortio(e, c, p, WorkloadRate, fmt.Sprint(c.Rate), "-payload-size", "1024", httpURL(e, "/echo"))
		}},
		{WorkloadMax, httpPort, protoHTTP1, func(e *env, c Config, p []proxy) ([]Value, error) {
			return fortio(e, c, p, WorkloadMax, "0", "-payload-size", "1024", httpURL(e, "/echo"))
		}},
		{WorkloadGRPC, grpcPort, protoH2C, func(e *env, c Config, p []proxy) ([]Value, error) {
			return fortio(e, c, p, WorkloadGRPC, "0", "-grpc", "-ping", net.JoinHostPort(e.server.IPv4.String(), fmt.Sprint(grpcPort)))
		}},
		{WorkloadNewConn, httpPort, protoHTTP1, func(e *env, c Config, p []proxy) ([]Value, error) {
			return fortio(e, c, p, WorkloadNewConn, "0", "-keepalive=false", httpURL(e, "/echo"))
		}},
		{WorkloadBulk, bulkPort, protoTCP, bulk},
		{WorkloadIdle, idlePort, protoTCP, idle},
	}
}

func httpURL(e *env, path string) string {
	return "http://" + net.JoinHostPort(e.server.IPv4.String(), fmt.Sprint(httpPort)) + path
}

// fortioResult is the part of `fortio load -json` the harness reads.
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// fortio runs `fortio load` in the client pod with cfg.Conns connections
// at qps ("0": as fast as they go) for cfg.Duration, and returns the
// latency percentiles, the throughput, the errors, and each proxy's CPU per
// 1000 requests and largest RSS during the run.
func fortio(e *env, cfg Config, proxies []proxy, name, qps string, args ...string) ([]Value, error) {
	argv := append([]string{"load", "-qps", qps, "-c", strconv.Itoa(cfg.Conns), "-t", cfg.Duration.String(),
		"-p", "50,90,99,99.9", "-json", "-", "-loglevel", "Warning", "-allow-initial-errors"}, args...)
	before, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	stop, peaks := watchRSS(proxies)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := e.client.Command(ctx, testpod.Root, e.tools.Fortio, argv...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	stop()
	if runErr != nil {
		return nil, fmt.Errorf("%s: fortio: %w\n%s", name, runErr, stderr.String())
	}
	after, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	var r fortioResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("%s: fortio's JSON: %w", name, err)
	}
	ok := r.RetCodes["200"] + r.RetCodes["SERVING"]
	vals := []Value{
		{name, "throughput", "req/s", "higher", r.ActualQPS},
		{name, "errors", "req", "lower", float64(r.DurationHistogram.Count - ok)},
	}
	for _, p := range r.DurationHistogram.Percentiles {
		vals = append(vals, Value{name, "p" + strconv.FormatFloat(p.Percentile, 'f', -1, 64), "ms", "lower", p.Value * 1000})
	}
	for i, p := range proxies {
		if ok > 0 {
			cpu := (after[i].CPU - before[i].CPU).Seconds() * 1000 / (float64(ok) / 1000)
			vals = append(vals, Value{name, "cpu per 1000 req, " + p.side + " proxy", "ms", "lower", cpu})
		}
		vals = append(vals, Value{name, "rss, " + p.side + " proxy", "MB", "lower", mb(peaks[i])})
	}
	return vals, nil
}

// bulk streams cfg.BulkBytes from the client pod to the server's sink in
// one connection and reports the rate.
func bulk(e *env, cfg Config, proxies []proxy) ([]Value, error) {
	before, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := e.client.Dial(ctx, "tcp", net.JoinHostPort(e.server.IPv4.String(), fmt.Sprint(bulkPort)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WorkloadBulk, err)
	}
	defer c.Close()
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	start := time.Now()
	var sent int64
	for sent < cfg.BulkBytes {
		n, err := c.Write(chunk[:min(int64(len(chunk)), cfg.BulkBytes-sent)])
		sent += int64(n)
		if err != nil {
			return nil, fmt.Errorf("%s: after %d bytes: %w", WorkloadBulk, sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return nil, err
	}
	answer, err := io.ReadAll(c)
	elapsed := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WorkloadBulk, err)
	}
	if got := string(answer); got != strconv.FormatInt(sent, 10) {
		return nil, fmt.Errorf("%s: the sink counted %q bytes, %d were sent", WorkloadBulk, got, sent)
	}
	after, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	vals := []Value{{WorkloadBulk, "throughput", "MB/s", "higher", float64(sent) / 1e6 / elapsed.Seconds()}}
	for i, p := range proxies {
		vals = append(vals, Value{WorkloadBulk, "cpu per GB, " + p.side + " proxy", "s", "lower",
			(after[i].CPU - before[i].CPU).Seconds() / (float64(sent) / 1e9)})
	}
	return vals, nil
}

// serveSink is the server pod's bulk sink: it reads to EOF and answers
// with the byte count, nothing else (no hashing: the harness must not be
// the bottleneck it measures).
func serveSink(t testpod.Cleaner, pod *testpod.Pod) error {
	l, err := pod.Listen("tcp", fmt.Sprintf(":%d", bulkPort))
	if err != nil {
		return err
	}
	meshtest.Serve(t, l, func(c net.Conn) {
		if n, err := io.Copy(io.Discard, c); err == nil {
			fmt.Fprint(c, n)
		}
	})
	return nil
}

func sampleAll(proxies []proxy) ([]usage, error) {
	out := make([]usage, len(proxies))
	for i, p := range proxies {
		u, err := sample(p.pid)
		if err != nil {
			return nil, fmt.Errorf("%s proxy: %w", p.side, err)
		}
		out[i] = u
	}
	return out, nil
}

// watchRSS samples the proxies' RSS every 100 ms until stop is called,
// and returns the largest seen for each.
func watchRSS(proxies []proxy) (stop func(), peaks []int64) {
	peaks = make([]int64, len(proxies))
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for i, p := range proxies {
				if u, err := sample(p.pid); err == nil {
					peaks[i] = max(peaks[i], u.RSS)
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }, peaks
}

func mb(bytes int64) float64 { return float64(bytes) / (1 << 20) }
