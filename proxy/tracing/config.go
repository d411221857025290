package tracing

import (
	"encoding/json"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// The defaults of the `tracing` section.
const (
	// DefaultSampling is the percentage of requests without a sampling
	// decision of their own that are traced: Istio's default of 1 %.
	DefaultSampling = 1.0
	// DefaultServiceName is the spans' service.name when the config does
	// not name one.
	DefaultServiceName = "pillion"
	// DefaultQueueSize is how many ended spans wait for export at most;
	// past it, spans are dropped and counted.
	DefaultQueueSize = 2048
	// DefaultBatchSize is the most spans sent in one export.
	DefaultBatchSize = 512
	// DefaultTimeout bounds one export call to the collector.
	DefaultTimeout = 5 * time.Second
	// DefaultFlushInterval is the longest an ended span waits before its
	// batch is sent.
	DefaultFlushInterval = time.Second
)

// Raw is the `tracing` section as the config file writes it:
//
//	tracing:
//	  otlp:
//	    endpoint: otel-collector.observability:4317  # OTLP gRPC, plaintext
//	    timeout: 5s                                  # one export call
//	  sampling: 1          # percent of requests with no decision of their own
//	  serviceName: shop.frontend
//	  queueSize: 2048      # ended spans waiting for export; more are dropped
//	  batchSize: 512
//	  flushInterval: 1s
type Raw struct {
	OTLP *struct {
		Endpoint string            `json:"endpoint"`
		Timeout  *filters.Duration `json:"timeout"`
	} `json:"otlp"`
	Sampling      *float64          `json:"sampling"`
	ServiceName   string            `json:"serviceName"`
	QueueSize     *int              `json:"queueSize"`
	BatchSize     *int              `json:"batchSize"`
	FlushInterval *filters.Duration `json:"flushInterval"`
}

// Config is a validated `tracing` section. Its zero value is not valid;
// get one from Raw.Validate.
type Config struct {
	// Endpoint is the OTLP gRPC collector's host:port.
	Endpoint string
	// Timeout bounds one export call.
	Timeout time.Duration
	// Sampling is the fraction (0..1) of requests traced when neither
	// the caller nor x-client-trace-id decided.
	Sampling float64
	// ServiceName is the spans' service.name.
	ServiceName string
	// QueueSize and BatchSize bound the export queue and one export.
	QueueSize int
	BatchSize int
	// FlushInterval is the longest a span waits in the queue.
	FlushInterval time.Duration
}

// Validate checks r into a Config. Errors are *filters.FieldError with the
// field's path below `tracing`, such as "otlp.endpoint".
func (r *Raw) Validate() (*Config, error) {
	c := &Config{
		Timeout:       DefaultTimeout,
		Sampling:      DefaultSampling / 100,
		ServiceName:   DefaultServiceName,
		QueueSize:     DefaultQueueSize,
		BatchSize:     DefaultBatchSize,
		FlushInterval: DefaultFlushInterval,
	}
	if r.OTLP == nil {
		return nil, filters.Invalid("otlp", "required: the OTLP gRPC collector to send spans to, such as {endpoint: otel-collector:4317}")
	}
	if err := checkEndpoint(r.OTLP.Endpoint); err != nil {
		return nil, err
	}
	c.Endpoint = r.OTLP.Endpoint
	if t := r.OTLP.Timeout; t != nil {
		if t.Std() <= 0 {
			return nil, filters.Invalid("otlp.timeout", "must be positive, got %s", t.Std())
		}
		c.Timeout = t.Std()
	}
	if s := r.Sampling; s != nil {
		if math.IsNaN(*s) || *s < 0 || *s > 100 {
			return nil, filters.Invalid("sampling", "a percentage from 0 to 100, got %v", *s)
		}
		c.Sampling = *s / 100
	}
	if r.ServiceName != "" {
		c.ServiceName = r.ServiceName
	}
	if q := r.QueueSize; q != nil {
		if *q < 1 || *q > 1<<20 {
			return nil, filters.Invalid("queueSize", "from 1 to %d spans, got %d", 1<<20, *q)
		}
		c.QueueSize = *q
	}
	if b := r.BatchSize; b != nil {
		if *b < 1 {
			return nil, filters.Invalid("batchSize", "at least 1 span, got %d", *b)
		}
		c.BatchSize = *b
	}
	if c.BatchSize > c.QueueSize {
		return nil, filters.Invalid("batchSize", "%d is more than queueSize (%d)", c.BatchSize, c.QueueSize)
	}
	if f := r.FlushInterval; f != nil {
		if f.Std() <= 0 {
			return nil, filters.Invalid("flushInterval", "must be positive, got %s", f.Std())
		}
		c.FlushInterval = f.Std()
	}
	return c, nil
}

// MarshalJSON writes c in the config file's own shape (durations as
// "5s", sampling in percent), for the admin endpoint's /config_dump.
func (c *Config) MarshalJSON() ([]byte, error) {
	type otlp struct {
		Endpoint string           `json:"endpoint"`
		Timeout  filters.Duration `json:"timeout"`
	}
	return json.Marshal(struct {
		OTLP          otlp             `json:"otlp"`
		Sampling      float64          `json:"sampling"`
		ServiceName   string           `json:"serviceName"`
		QueueSize     int              `json:"queueSize"`
		BatchSize     int              `json:"batchSize"`
		FlushInterval filters.Duration `json:"flushInterval"`
	}{otlp{c.Endpoint, filters.Duration(c.Timeout)}, c.Sampling * 100, c.ServiceName, c.QueueSize, c.BatchSize, filters.Duration(c.FlushInterval)})
}

// checkEndpoint accepts host:port with a port from 1 to 65535.
func checkEndpoint(ep string) error {
	const field = "otlp.endpoint"
	if ep == "" {
		return filters.Invalid(field, "required: the collector's host:port, such as otel-collector:4317")
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil || host == "" {
		return filters.Invalid(field, "%q is not host:port, such as otel-collector:4317", ep)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return filters.Invalid(field, "%q: port %q is not a number from 1 to 65535", ep, port)
	}
	return nil
}
