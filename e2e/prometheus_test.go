package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// prometheusVersion is the module version of github.com/prometheus/prometheus
// the Makefile builds (make prometheus) into .cache/tools.
const prometheusVersion = "v0.316.0"

// prometheusBin is the Prometheus server: $PROMETHEUS, else the
// Makefile's build in .cache/tools. Missing, the test is skipped with how
// to build it, or fails under CI=true.
func prometheusBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PROMETHEUS")
	if p == "" {
		root, err := meshtest.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, ".cache", "tools", "prometheus-"+prometheusVersion)
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("prometheus not found (%v): run `make test`, which builds it, or `make prometheus`", err)
		if privileged.InCI() {
			t.Fatal(msg + " (CI=true: failing instead of skipping)")
		}
		t.Skip(msg)
	}
	return p
}

// promServer is a Prometheus server running in a test pod, scraping
// pillion sidecars' /stats/prometheus every second.
type promServer struct {
	pod     *testpod.Pod
	client  *meshtest.HTTPClient
	targets int
}

const promAddr = "127.0.0.1:9090"

// startPrometheus starts Prometheus in pod, scraping targets (ip:15090),
// and waits until it answers.
func startPrometheus(t *testing.T, pod *testpod.Pod, targets ...string) *promServer {
	t.Helper()
	bin := prometheusBin(t)
	dir := t.TempDir()
	var list string
	for i, tg := range targets {
		if i > 0 {
			list += ", "
		}
		list += strconv.Quote(tg)
	}
	config := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: pillion
    metrics_path: /stats/prometheus
    static_configs: [{targets: [%s]}]
`, list)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	pod.Start(t, testpod.Root, bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	p := &promServer{pod: pod, client: meshtest.NewHTTPClient(pod, false), targets: len(targets)}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := p.client.Get("http://" + promAddr + "/-/ready")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30 s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// promSample is one element of an instant vector.
type promSample struct {
	metric map[string]string
	value  float64
}

// query evaluates expr now and returns the instant vector (a scalar as
// one sample without labels).
func (p *promServer) query(t *testing.T, expr string) []promSample {
	t.Helper()
	res, body := podHTTP(t, p.client, "GET", "http://"+promAddr+"/api/v1/query?query="+url.QueryEscape(expr))
	var out struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     json.RawMessage
		}
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil || out.Status != "success" {
		t.Fatalf("query %s: %s: %v %s\n%s", expr, res.Status, err, out.Error, body)
	}
	var samples []promSample
	switch out.Data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string
			Value  [2]any
		}
		if err := json.Unmarshal(out.Data.Result, &vec); err != nil {
			t.Fatal(err)
		}
		for _, v := range vec {
			samples = append(samples, promSample{metric: v.Metric, value: sampleValue(t, v.Value[1])})
		}
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(out.Data.Result, &v); err != nil {
			t.Fatal(err)
		}
		samples = append(samples, promSample{value: sampleValue(t, v[1])})
	default:
		t.Fatalf("query %s: result type %s", expr, out.Data.ResultType)
	}
	return samples
}

func sampleValue(t *testing.T, v any) float64 {
	t.Helper()
	s, _ := v.(string)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("sample value %v: %v", v, err)
	}
	return f
}

// waitScrapes waits until every target was scraped up n more times.
func (p *promServer) waitScrapes(t *testing.T, n int) {
	t.Helper()
	count := func() float64 {
		v := p.query(t, `sum(count_over_time(up{job="pillion"}[10m]))`)
		if len(v) == 0 {
			return 0
		}
		return v[0].value
	}
	want := count() + float64(n*p.targets)
	deadline := time.Now().Add(time.Duration(n)*time.Second + 30*time.Second)
	for count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not scrape %d more times: %v", n, p.query(t, `up`))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if up := p.query(t, `min(up{job="pillion"})`); len(up) != 1 || up[0].value != 1 {
		t.Fatalf("a sidecar is not up for prometheus: %+v", p.query(t, `up`))
	}
}

// readTestdata reads a file of e2e/testdata.
func readTestdata(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	return string(b), err
}
