package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/proxy/sniff"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// The Prometheus metrics of a Server, registered in New on
// Config.Registerer. HTTP requests are recorded as they end, by the
// collectors of requestMetrics; everything else is read at scrape time
// from the counters the data path keeps anyway (Stats, the pools' counts,
// the identity's SVID), so that metrics cost the data path nothing more.

// requestBuckets are the bounds, in seconds, of the latency histograms:
// from a request answered on loopback to a long poll.
func requestBuckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
}

// requestMetrics records HTTP requests. Its methods are safe for
// concurrent use.
type requestMetrics struct {
	requests [2]*prometheus.CounterVec // by Direction, curried: code, flags, peer, destination service
	duration [2]prometheus.Observer    // by Direction
	upstream [2]prometheus.Observer    // by Direction
	codes    [600]string               // status code → label, without a conversion per request
}

// newRequestMetrics returns the request metrics and the collectors to
// register.
func newRequestMetrics() (*requestMetrics, []prometheus.Collector) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pillion_requests_total",
		Help: "HTTP requests by direction, response code sent downstream (0: none), response flags (-: none), the caller's SPIFFE ID (inbound over mTLS, else empty) and the destination Service's name and namespace (outbound, when discovery knows it, else empty).",
	}, []string{"direction", "code", "flags", "peer", "destination_service_name", "destination_service_namespace"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pillion_request_duration_seconds",
		Help:    "Time from an HTTP request's headers received to the proxy done with it, response sent.",
		Buckets: requestBuckets(),
	}, []string{"direction"})
	upstream := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pillion_upstream_duration_seconds",
		Help:    "Upstream service time of HTTP requests whose upstream answered: request sent to response headers received.",
		Buckets: requestBuckets(),
	}, []string{"direction"})
	m := &requestMetrics{}
	for _, d := range []Direction{Outbound, Inbound} {
		l := prometheus.Labels{"direction": d.String()}
		m.requests[d] = requests.MustCurryWith(l)
		m.duration[d] = duration.With(l)
		m.upstream[d] = upstream.With(l)
	}
	for c := range m.codes {
		m.codes[c] = strconv.Itoa(c)
	}
	return m, []prometheus.Collector{requests, duration, upstream}
}

// serveRecorded serves r with h and records it, in pillion's metrics and
// Istio's, once h returns, or panics (an aborted response); said is what
// the peer sidecar said of the request (inbound). Without metrics it just
// serves.
func (s *Server) serveRecorded(h http.Handler, w http.ResponseWriter, r *http.Request, info *filters.Info, said peerSaid) {
	if s.metrics == nil {
		h.ServeHTTP(w, r)
		return
	}
	ir := s.startIstio(r, said)
	o := filters.Observe(w)
	returned := false
	defer func() {
		status := sentStatus(o.Status(), returned)
		s.metrics.record(info, status)
		if ir != nil {
			s.endIstio(ir, info, o, status)
		}
	}()
	h.ServeHTTP(o, r)
	returned = true
}

// sentStatus is the status sent for a request whose handler wrote status
// (0: none) and returned, or panicked (returned false: an aborted
// response).
func sentStatus(status int, returned bool) int {
	if status == 0 && returned {
		return http.StatusOK // what net/http sends for a handler that wrote nothing
	}
	return status
}

// record records one request that ended with status (0: none written).
func (m *requestMetrics) record(info *filters.Info, status int) {
	var code string
	if status >= 0 && status < len(m.codes) {
		code = m.codes[status]
	} else {
		code = strconv.Itoa(status)
	}
	dir := info.Direction
	svc := info.Endpoint().Service
	m.requests[dir].WithLabelValues(code, info.Flags().String(), info.Peer, svc.Name, svc.Namespace).Inc()
	m.duration[dir].Observe(time.Since(info.Start).Seconds())
	if d, ok := info.UpstreamTime(); ok {
		m.upstream[dir].Observe(d.Seconds())
	}
}

// registerMetrics creates the server's metrics and registers them on reg;
// a nil reg turns metrics off. On error nothing stays registered.
func (s *Server) registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	m, cs := newRequestMetrics()
	istio := istiometrics.New(s.cfg.Workload)
	cs = append(cs, newStatsCollector(s))
	cs = append(cs, istio.Collectors()...)
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("metrics: %w", err)
		}
	}
	s.metrics, s.istio = m, istio
	return nil
}

// statsCollector exports, at scrape time, the counters the server keeps:
// its Stats, its pools' connections and its SVID's expiry.
type statsCollector struct {
	s *Server

	accepted, active, closed, bytesSent, bytesRecv, refused, dialFailures,
	detected, sniffTimeouts, headerTimeouts, mtls, plaintext, tlsFailures, denied,
	poolConns, svidExpiry, draining *prometheus.Desc

	handshakesActive, handshakesPeak, handshakesQueued, handshakesWaited, handshakeQueueTimeouts *prometheus.Desc
}

var _ prometheus.Collector = (*statsCollector)(nil)

func newStatsCollector(s *Server) *statsCollector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pillion_"+name, help, labels, nil)
	}
	dir := "direction"
	return &statsCollector{
		s:              s,
		accepted:       desc("connections_total", "TCP connections accepted on the listener.", dir),
		active:         desc("connections_active", "TCP connections being proxied now (past protocol detection and admission).", dir),
		closed:         desc("connections_closed_total", "Proxied TCP connections that ended, cleanly or not.", dir),
		bytesSent:      desc("bytes_sent_total", "Bytes from downstream to upstream, counted when their connection ends.", dir),
		bytesRecv:      desc("bytes_received_total", "Bytes from upstream to downstream, counted when their connection ends.", dir),
		refused:        desc("connections_refused_total", "TCP connections reset at once, by reason: over_limit, loop, no_original_dst, plaintext (inbound, mesh.mode STRICT).", dir, "reason"),
		dialFailures:   desc("upstream_connect_failures_total", "Connections to the upstream of an opaque TCP connection that failed or timed out.", dir),
		detected:       desc("protocol_detected_total", "TCP connections by the protocol detected (opaque also for opaque ports).", dir, "protocol"),
		sniffTimeouts:  desc("sniff_timeouts_total", "TCP connections whose client sent too little to tell its protocol in time, forwarded as opaque.", dir),
		headerTimeouts: desc("http_header_timeouts_total", "HTTP/1 connections closed because a request's headers did not arrive within --header-timeout of their first byte.", dir),
		mtls:           desc("mtls_connections_total", "mTLS connections between sidecars whose handshake completed: inbound from peers, outbound to them.", dir),
		plaintext:      desc("plaintext_connections_total", "Inbound connections not mTLS from a peer sidecar, passed to the application (mesh.mode PERMISSIVE)."),
		tlsFailures:    desc("tls_handshake_failures_total", "mTLS handshakes between sidecars that failed, by reason.", dir, "reason"),
		denied:         desc("authz_denied_connections_total", "Inbound opaque mTLS connections the authz filter refused."),
		poolConns:      desc("pool_connections", "Open upstream HTTP connections in the pools, by endpoint (ip:port) and protocol.", "endpoint", "protocol"),
		svidExpiry:     desc("svid_expiry_timestamp_seconds", "When the sidecar's current X.509-SVID expires, in seconds since the Unix epoch; absent without an identity or an SVID."),
		draining:       desc("draining", "1 once the sidecar drains (SIGTERM, POST /drain or /quitquitquit): not ready, listeners accepting for --drain-period, then closed; 0 while it serves."),

		handshakesActive:       desc("tls_handshakes_active", "mTLS handshakes in flight now, both directions (at most --max-handshakes)."),
		handshakesPeak:         desc("tls_handshakes_active_peak", "The most mTLS handshakes ever in flight at once since the start (at most --max-handshakes)."),
		handshakesQueued:       desc("tls_handshakes_queued", "mTLS handshakes waiting now for one in flight to end."),
		handshakesWaited:       desc("tls_handshakes_queued_total", "mTLS handshakes that had to wait for one in flight to end."),
		handshakeQueueTimeouts: desc("tls_handshake_queue_timeouts_total", "mTLS handshakes whose time ran out while they waited."),
	}
}

// Describe sends every metric's description.
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.accepted, c.active, c.closed, c.bytesSent, c.bytesRecv, c.refused, c.dialFailures,
		c.detected, c.sniffTimeouts, c.headerTimeouts, c.mtls, c.plaintext, c.tlsFailures, c.denied,
		c.poolConns, c.svidExpiry, c.draining,
		c.handshakesActive, c.handshakesPeak, c.handshakesQueued, c.handshakesWaited, c.handshakeQueueTimeouts,
	} {
		ch <- d
	}
}

// Collect reads the server's counters. Each is read atomically on its
// own, not all as one snapshot.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	hs := c.s.handshakes
	gauge(c.handshakesActive, float64(hs.active.Load()))
	gauge(c.handshakesPeak, float64(hs.peak.Load()))
	gauge(c.handshakesQueued, float64(hs.queued.Load()))
	counter(c.handshakesWaited, hs.waited.Load())
	counter(c.handshakeQueueTimeouts, hs.timeouts.Load())
	for _, d := range []Direction{Outbound, Inbound} {
		st, dir := &c.s.stats.Dir[d], d.String()
		counter(c.accepted, st.Accepted.Load(), dir)
		gauge(c.active, float64(st.Active.Load()), dir)
		counter(c.closed, st.Completed.Load(), dir)
		counter(c.bytesSent, st.BytesSent.Load(), dir)
		counter(c.bytesRecv, st.BytesRecv.Load(), dir)
		counter(c.refused, st.OverLimit.Load(), dir, "over_limit")
		counter(c.refused, st.Loops.Load(), dir, "loop")
		counter(c.refused, st.NoOrigDst.Load(), dir, "no_original_dst")
		if d == Inbound {
			counter(c.refused, st.PlaintextRefused.Load(), dir, "plaintext")
		}
		counter(c.dialFailures, st.DialFailures.Load(), dir)
		for p := range st.Detected {
			counter(c.detected, st.Detected[p].Load(), dir, sniff.Protocol(p).String())
		}
		counter(c.sniffTimeouts, st.SniffTimeouts.Load(), dir)
		counter(c.headerTimeouts, st.HeaderTimeouts.Load(), dir)
		counter(c.mtls, st.MTLS.Load(), dir)
		for f := range st.TLSFailures {
			counter(c.tlsFailures, st.TLSFailures[f].Load(), dir, mtls.Failure(f).String())
		}
	}
	draining := 0.0
	if c.s.life.draining.Load() {
		draining = 1
	}
	gauge(c.draining, draining)
	counter(c.plaintext, c.s.stats.Dir[Inbound].Plaintext.Load())
	counter(c.denied, c.s.stats.Dir[Inbound].Denied.Load())
	for _, e := range c.s.PoolConns() {
		if e.Open > 0 { // endpoints the pools no longer hold connections to drop out
			gauge(c.poolConns, float64(e.Open), e.Endpoint, poolProtocol(e.Protocol))
		}
	}
	if id := c.s.cfg.Identity; id != nil {
		if svid, err := id.GetX509SVID(); err == nil && len(svid.Certificates) > 0 {
			gauge(c.svidExpiry, float64(svid.Certificates[0].NotAfter.Unix()))
		}
	}
}

// poolProtocol is a pool protocol's label: "http/1.1" or "http/2".
func poolProtocol(p upstream.Protocol) string { return strings.ToLower(p.String()) }
