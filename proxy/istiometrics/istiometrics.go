// Package istiometrics records Istio's standard metrics
// (https://istio.io/latest/docs/reference/config/metrics/) beside the
// sidecar's own: istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes and istio_response_bytes per HTTP request, and
// istio_tcp_* per opaque TCP connection, with Istio's names, labels and
// bucket boundaries, so that the Istio Grafana dashboards and Kiali read a
// pillion mesh unchanged. Each sidecar reports what it handled: reporter
// "source" on the caller's side (outbound), "destination" on the callee's
// (inbound), as Istio's sidecars do.
//
// Label values never hold a path or a raw address: they come from the
// sidecar's own pod (Workload), from the SPIFFE IDs of mTLS hops and from
// the Service discovery named, so the series stay bounded by the mesh's
// workloads, codes and flags.
package istiometrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// durationBuckets are Envoy's default histogram bounds, which Istio's
// metrics use (in milliseconds, and for the byte sizes as they are).
func durationBuckets() []float64 {
	return []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
}

// bytesBuckets are the bounds of istio_request_bytes and
// istio_response_bytes: Istio's sidecars export them with Envoy's
// default buckets too.
func bytesBuckets() []float64 { return durationBuckets() }

// Metrics records the Istio family. Its methods are safe for concurrent
// use. While off (SetEnabled(false)) it records nothing and exports no
// series.
type Metrics struct {
	local Workload
	on    atomic.Bool

	requests                               *prometheus.CounterVec
	duration, requestBytes, responseBytes  *prometheus.HistogramVec
	tcpSent, tcpReceived, tcpOpen, tcpDone *prometheus.CounterVec

	mu     sync.RWMutex
	series map[requestKey]*requestSeries // the recorded requests' series, so that labels are built once
	// gen counts the resets of SetEnabled(false): a series looked up
	// before one is no longer exported.
	gen atomic.Uint64
}

// requestKey is what a request's labels follow from.
type requestKey struct {
	conn       Conn
	grpc       bool
	code       int
	grpcStatus string
	flags      string
}

type requestSeries struct {
	requests                     prometheus.Counter
	duration, reqBytes, resBytes prometheus.Observer
}

// New returns the metrics of the sidecar of local, on. Register
// Collectors on a registry to export them.
func New(local Workload) *Metrics {
	http, tcp := HTTPLabels(), TCPLabels()
	m := &Metrics{
		local:  local,
		series: map[requestKey]*requestSeries{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total",
			Help: "HTTP and gRPC requests handled, Istio's standard metric (reporter source: outbound, destination: inbound).",
		}, http),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "istio_request_duration_milliseconds",
			Help:    "Time from an HTTP request's headers received to its response sent, in milliseconds, Istio's standard metric.",
			Buckets: durationBuckets(),
		}, http),
		requestBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "istio_request_bytes",
			Help:    "HTTP request body sizes in bytes, Istio's standard metric.",
			Buckets: bytesBuckets(),
		}, http),
		responseBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "istio_response_bytes",
			Help:    "HTTP response body sizes in bytes, Istio's standard metric.",
			Buckets: bytesBuckets(),
		}, http),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total",
			Help: "Bytes sent to the downstream (the response direction) of opaque TCP connections, counted as they move (at least every 5 s), Istio's standard metric.",
		}, tcp),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total",
			Help: "Bytes received from the downstream (the request direction) of opaque TCP connections, counted as they move (at least every 5 s), Istio's standard metric.",
		}, tcp),
		tcpOpen: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total",
			Help: "Opaque TCP connections opened (upstream connected, or failed to), Istio's standard metric.",
		}, tcp),
		tcpDone: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total",
			Help: "Opaque TCP connections closed, Istio's standard metric.",
		}, tcp),
	}
	m.on.Store(true)
	return m
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.duration, m.requestBytes, m.responseBytes,
		m.tcpSent, m.tcpReceived, m.tcpOpen, m.tcpDone}
}

// SetEnabled turns the family on or off. Turning it off drops every series
// recorded so far: a scrape then shows none of them.
func (m *Metrics) SetEnabled(on bool) {
	if m.on.Swap(on) == on || on {
		return
	}
	m.gen.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.series)
	for _, c := range []*prometheus.CounterVec{m.requests, m.tcpSent, m.tcpReceived, m.tcpOpen, m.tcpDone} {
		c.Reset()
	}
	for _, h := range []*prometheus.HistogramVec{m.duration, m.requestBytes, m.responseBytes} {
		h.Reset()
	}
}

// Enabled reports whether the family is on.
func (m *Metrics) Enabled() bool { return m.on.Load() }

// Request is one HTTP request as it ended.
type Request struct {
	Conn Conn
	// GRPC: the request's content-type is application/grpc[+...].
	GRPC bool
	// Code is the status sent downstream; 0 when none was.
	Code int
	// GRPCStatus is the grpc-status the response ended with (trailer, or
	// header of a trailers-only response); "" when none or not gRPC.
	GRPCStatus string
	// Flags are the response flags as Envoy prints them ("-": none).
	Flags string
	// Duration runs from the request's headers received to the response
	// sent.
	Duration time.Duration
	// RequestBytes and ResponseBytes are the body bytes read from the
	// downstream and written to it.
	RequestBytes, ResponseBytes int64
}

// RecordRequest records r, unless the family is off.
func (m *Metrics) RecordRequest(r *Request) {
	if !m.on.Load() {
		return
	}
	k := requestKey{conn: r.Conn, grpc: r.GRPC, code: r.Code, flags: r.Flags}
	if r.GRPC {
		k.grpcStatus = grpcStatusLabel(r.GRPCStatus, r.Code)
	}
	m.mu.RLock()
	s := m.series[k]
	m.mu.RUnlock()
	if s == nil {
		if s = m.newSeries(k); s == nil {
			return // turned off meanwhile
		}
	}
	s.requests.Inc()
	s.duration.Observe(float64(r.Duration) / float64(time.Millisecond))
	s.reqBytes.Observe(float64(r.RequestBytes))
	s.resBytes.Observe(float64(r.ResponseBytes))
}

// newSeries returns k's series, made if need be; nil when the family is
// off.
func (m *Metrics) newSeries(k requestKey) *requestSeries {
	var l [numLabels]string
	m.connLabels(&l, k.conn)
	l[lRequestProtocol] = "http"
	if k.grpc {
		l[lRequestProtocol] = "grpc"
	}
	l[lResponseFlags] = k.flags
	l[lResponseCode] = strconv.Itoa(k.code)
	l[lGRPCResponseStatus] = k.grpcStatus
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.series[k]; s != nil {
		return s
	}
	if !m.on.Load() {
		// SetEnabled(false) reset the family after RecordRequest looked:
		// a series made now would be exported while the family is off.
		return nil
	}
	s := &requestSeries{
		requests: m.requests.WithLabelValues(l[:]...),
		duration: m.duration.WithLabelValues(l[:]...),
		reqBytes: m.requestBytes.WithLabelValues(l[:]...),
		resBytes: m.responseBytes.WithLabelValues(l[:]...),
	}
	m.series[k] = s
	return s
}

// TCP is one opaque TCP connection whose opening was recorded; End
// records its end.
type TCP struct {
	m              *Metrics
	labels         []string // nil: the family was off when it opened
	received, sent tcpBytes
}

// tcpBytes is one of a connection's byte counters. It is looked up once,
// and again only after the family was reset (Metrics.gen), so that a
// long connection's many reports cost an atomic add each, and its bytes
// after the family was switched off and on land in the new series. Each
// is used by one goroutine at a time.
type tcpBytes struct {
	vec *prometheus.CounterVec
	c   prometheus.Counter
	gen uint64
}

// OpenTCP records a connection to the upstream of c made. Report its
// bytes with Received and Sent as they move, and call End once it closes.
func (m *Metrics) OpenTCP(c Conn) *TCP {
	t := &TCP{m: m, received: tcpBytes{vec: m.tcpReceived}, sent: tcpBytes{vec: m.tcpSent}}
	if !m.on.Load() {
		return t
	}
	t.labels = m.tcpLabels(c, "-")
	m.tcpOpen.WithLabelValues(t.labels...).Inc()
	return t
}

// Received records n more bytes received from the downstream. Received
// and Sent may run concurrently, each with itself never.
func (t *TCP) Received(n int64) { t.add(&t.received, n) }

// Sent records n more bytes sent to the downstream.
func (t *TCP) Sent(n int64) { t.add(&t.sent, n) }

func (t *TCP) add(b *tcpBytes, n int64) {
	if t.labels == nil || !t.m.on.Load() {
		return
	}
	if g := t.m.gen.Load(); b.c == nil || b.gen != g {
		b.c, b.gen = b.vec.WithLabelValues(t.labels...), g
	}
	b.c.Add(float64(n))
}

// End records the connection closed.
func (t *TCP) End() {
	if t.labels != nil && t.m.on.Load() {
		t.m.tcpDone.WithLabelValues(t.labels...).Inc()
	}
}

// FailedTCP records a connection whose upstream could not be reached,
// opened and closed at once with flags (Envoy's, "UF" or "UH").
func (m *Metrics) FailedTCP(c Conn, flags string) {
	if !m.on.Load() {
		return
	}
	l := m.tcpLabels(c, flags)
	m.tcpOpen.WithLabelValues(l...).Inc()
	m.tcpReceived.WithLabelValues(l...).Add(0)
	m.tcpSent.WithLabelValues(l...).Add(0)
	m.tcpDone.WithLabelValues(l...).Inc()
}

func (m *Metrics) tcpLabels(c Conn, flags string) []string {
	var l [numLabels]string
	m.connLabels(&l, c)
	l[lRequestProtocol] = "tcp"
	l[lResponseFlags] = flags
	return l[:numConnLabels]
}

// grpcStatusLabel is grpc_response_status for a gRPC request whose answer
// said status ("" when it said none) with HTTP code: one of gRPC's 17
// codes or unknown, never the string as sent (a label's values must stay
// few; Envoy's getGrpcStatus parses it too); with no grpc-status, Envoy's
// mapping of the HTTP status (Grpc::Utility::httpToGrpcStatus).
func grpcStatusLabel(status string, code int) string {
	if status != "" {
		if n, err := strconv.ParseUint(status, 10, 8); err == nil && n <= 16 {
			return strconv.FormatUint(n, 10)
		}
		return Unknown
	}
	switch code {
	case 0:
		return Unknown // nothing was sent
	case http.StatusBadRequest:
		return "13" // INTERNAL
	case http.StatusUnauthorized:
		return "16" // UNAUTHENTICATED
	case http.StatusForbidden:
		return "7" // PERMISSION_DENIED
	case http.StatusNotFound:
		return "12" // UNIMPLEMENTED
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "14" // UNAVAILABLE
	}
	return "2" // UNKNOWN
}
