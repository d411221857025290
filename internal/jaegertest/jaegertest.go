// Package jaegertest runs a real Jaeger (v2, the OpenTelemetry Collector
// based all-in-one, in-memory storage) for the tests: its OTLP gRPC
// receiver takes spans, its query API gives them back as Jaeger's UI
// reads them.
package jaegertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
)

// Path is the jaeger binary: $JAEGER, which `make test` sets, or where
// the Makefile builds it. Missing, the test is skipped (`make unit` on a
// fresh clone) and fails under CI=true.
func Path(t testing.TB) string {
	t.Helper()
	p := os.Getenv("JAEGER")
	if p == "" {
		root, err := meshtest.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, ".cache", "jaeger-v1.75.0", "jaeger")
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("jaeger not found (%v): run `make test`, which builds it, or `make jaeger` (about 4 minutes, once)", err)
		if privileged.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Jaeger is a running Jaeger on the test's loopback.
type Jaeger struct {
	// OTLP is the OTLP gRPC receiver's host:port.
	OTLP string
	// Query is the query API's base URL (http://127.0.0.1:port).
	Query string

	cmd  *exec.Cmd
	out  *syncBuffer
	once sync.Once
}

// config is Jaeger's own all-in-one config cut to what the tests use, on
// ports of their choosing; %d are the OTLP, query HTTP and query gRPC ports.
const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {level: none}
    logs: {level: warn}
extensions:
  jaeger_query:
    storage: {traces: mem}
    http: {endpoint: "127.0.0.1:%d"}
    grpc: {endpoint: "127.0.0.1:%d"}
  jaeger_storage:
    backends:
      mem: {memory: {max_traces: 10000}}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:%d"}
processors:
  batch: {timeout: 50ms}
exporters:
  jaeger_storage_exporter: {trace_storage: mem}
`

// Start runs Jaeger until t ends and waits for its query API.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Path(t)
	ports := freePorts(t, 3)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, ports[1], ports[2], ports[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	j := &Jaeger{
		OTLP:  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		Query: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		out:   &syncBuffer{},
	}
	j.cmd = exec.Command(bin, "--config", cfg)
	j.cmd.Dir = dir
	j.cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true")
	j.cmd.Stdout, j.cmd.Stderr = j.out, j.out
	if err := j.cmd.Start(); err != nil {
		t.Fatalf("jaegertest: %v", err)
	}
	t.Cleanup(j.Stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := http.Get(j.Query + "/api/services")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaegertest: the query API did not answer within 60 s (%v):\n%s", err, j.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		c, err := net.DialTimeout("tcp", j.OTLP, time.Second)
		if err == nil {
			c.Close()
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaegertest: no OTLP receiver on %s: %v\n%s", j.OTLP, err, j.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills Jaeger (its storage goes with it); a second Stop does nothing.
func (j *Jaeger) Stop() {
	j.once.Do(func() {
		_ = j.cmd.Process.Kill()
		_ = j.cmd.Wait()
	})
}

// Output is what Jaeger printed.
func (j *Jaeger) Output() string { return j.out.String() }

// Trace is one trace as Jaeger's query API gives it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	ProcessID string `json:"processID"`
}

// Process is the service that reported spans.
type Process struct {
	ServiceName string `json:"serviceName"`
}

// Parent is the span ID of s's CHILD_OF reference, "" for a root.
func (s Span) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag is the value of s's tag key as text ("" when absent); numbers are
// written as integers when they are.
func (s Span) Tag(key string) string {
	for _, kv := range s.Tags {
		if kv.Key == key {
			if f, ok := kv.Value.(float64); ok && f == float64(int64(f)) {
				return strconv.FormatInt(int64(f), 10)
			}
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

// Service is the name of the service that reported s.
func (tr Trace) Service(s Span) string { return tr.Processes[s.ProcessID].ServiceName }

// Get asks for the trace with id (32 hex digits); found is false when
// Jaeger does not hold it.
func (j *Jaeger) Get(id string) (tr Trace, found bool, err error) {
	res, err := http.Get(j.Query + "/api/traces/" + id)
	if err != nil {
		return Trace{}, false, err
	}
	defer res.Body.Close()
	var body struct {
		Data []Trace `json:"data"`
	}
	if res.StatusCode == http.StatusNotFound {
		return Trace{}, false, nil
	}
	if res.StatusCode != http.StatusOK {
		return Trace{}, false, fmt.Errorf("jaegertest: GET /api/traces/%s: %s", id, res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return Trace{}, false, fmt.Errorf("jaegertest: /api/traces/%s: %w", id, err)
	}
	if len(body.Data) == 0 {
		return Trace{}, false, nil
	}
	return body.Data[0], true, nil
}

// WaitTrace waits up to timeout for the trace with id to hold at least
// spans spans, and returns it.
func (j *Jaeger) WaitTrace(t testing.TB, id string, spans int, timeout time.Duration) Trace {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		tr, found, err := j.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if found && len(tr.Spans) >= spans {
			return tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaegertest: trace %s has %d spans after %v, want %d: %+v", id, len(tr.Spans), timeout, spans, tr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePorts returns n TCP ports free on 127.0.0.1 now.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// syncBuffer is a bytes.Buffer safe for a process's two pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
