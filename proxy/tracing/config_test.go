package tracing

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *Config
		err      string
	}{
		{name: "defaults", in: `{"otlp":{"endpoint":"jaeger:4317"}}`, want: &Config{
			Endpoint: "jaeger:4317", Timeout: DefaultTimeout, Sampling: 0.01, ServiceName: "pillion",
			QueueSize: DefaultQueueSize, BatchSize: DefaultBatchSize, FlushInterval: time.Second,
		}},
		{name: "all set", in: `{"otlp":{"endpoint":"[fd00::1]:4317","timeout":"2s"},"sampling":100,"serviceName":"shop.frontend","queueSize":10,"batchSize":5,"flushInterval":"100ms"}`, want: &Config{
			Endpoint: "[fd00::1]:4317", Timeout: 2 * time.Second, Sampling: 1, ServiceName: "shop.frontend",
			QueueSize: 10, BatchSize: 5, FlushInterval: 100 * time.Millisecond,
		}},
		{name: "sampling zero", in: `{"otlp":{"endpoint":"h:1"},"sampling":0}`, want: &Config{
			Endpoint: "h:1", Timeout: DefaultTimeout, Sampling: 0, ServiceName: "pillion",
			QueueSize: DefaultQueueSize, BatchSize: DefaultBatchSize, FlushInterval: time.Second,
		}},
		{name: "no otlp", in: `{"sampling":5}`, err: "otlp: required: the OTLP gRPC collector to send spans to, such as {endpoint: otel-collector:4317}"},
		{name: "no endpoint", in: `{"otlp":{}}`, err: "otlp.endpoint: required: the collector's host:port, such as otel-collector:4317"},
		{name: "no port", in: `{"otlp":{"endpoint":"jaeger"}}`, err: `otlp.endpoint: "jaeger" is not host:port, such as otel-collector:4317`},
		{name: "bad port", in: `{"otlp":{"endpoint":"jaeger:70000"}}`, err: `otlp.endpoint: "jaeger:70000": port "70000" is not a number from 1 to 65535`},
		{name: "url", in: `{"otlp":{"endpoint":"http://jaeger:4317"}}`, err: `otlp.endpoint: "http://jaeger:4317" is not host:port, such as otel-collector:4317`},
		{name: "sampling over", in: `{"otlp":{"endpoint":"h:1"},"sampling":101}`, err: "sampling: a percentage from 0 to 100, got 101"},
		{name: "sampling negative", in: `{"otlp":{"endpoint":"h:1"},"sampling":-1}`, err: "sampling: a percentage from 0 to 100, got -1"},
		{name: "zero timeout", in: `{"otlp":{"endpoint":"h:1","timeout":"0s"}}`, err: "otlp.timeout: must be positive, got 0s"},
		{name: "queue", in: `{"otlp":{"endpoint":"h:1"},"queueSize":0}`, err: "queueSize: from 1 to 1048576 spans, got 0"},
		{name: "batch over queue", in: `{"otlp":{"endpoint":"h:1"},"queueSize":4,"batchSize":5}`, err: "batchSize: 5 is more than queueSize (4)"},
		{name: "flush", in: `{"otlp":{"endpoint":"h:1"},"flushInterval":"-1s"}`, err: "flushInterval: must be positive, got -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Raw
			d := json.NewDecoder(bytes.NewReader([]byte(tc.in)))
			d.DisallowUnknownFields()
			if err := d.Decode(&r); err != nil {
				t.Fatal(err)
			}
			got, err := r.Validate()
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConfigJSON: /config_dump shows the section as the file writes it,
// and what it shows is a valid section giving the same Config.
func TestConfigJSON(t *testing.T) {
	in := `{"otlp":{"endpoint":"jaeger:4317","timeout":"2s"},"sampling":12.5,"serviceName":"web.shop","queueSize":100,"batchSize":10,"flushInterval":"250ms"}`
	var r Raw
	if err := json.Unmarshal([]byte(in), &r); err != nil {
		t.Fatal(err)
	}
	c, err := r.Validate()
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Errorf("dump %s\nwant %s", out, in)
	}
}
