package admin

import (
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// stat is one line of /stats: a series name with its labels, and its value.
type stat struct {
	name  string
	value float64
}

// stats answers /stats. The text format is one "name{label="v",...}: value" line per series, in
// the Gatherer's order (by metric name, then label values). Counters, gauges and untyped metrics
// give one line. A histogram series gives Prometheus's lines: name_bucket{...,le="<bound>"} with
// cumulative counts in increasing bound order ending at le="+Inf", then name_count and name_sum; a
// summary gives name{...,quantile="<q>"} lines, then name_count and name_sum. Values are plain
// decimals (no exponent); NaN and ±Inf are spelled as Prometheus spells them.
//
// ?filter=<regex> (RE2) keeps the lines whose name, labels included, matches: filter=_count,
// filter=direction="inbound". ?format=json gives {"stats":[{"name":...,"value":...}]} with the same
// lines (non-finite values as strings), ?format=prometheus is /stats/prometheus.
func (s *server) stats(w http.ResponseWriter, r *http.Request) {
	if s.src.Gatherer == nil {
		unavailable(w, r)
		return
	}
	filter, ok := parseFilter(w, r)
	if !ok {
		return
	}
	format := r.URL.Query().Get("format")
	switch format {
	case "", "text", "json":
	case "prometheus":
		s.statsPrometheus(w, r)
		return
	default:
		text(w, http.StatusBadRequest, "stats: unknown format %q: valid formats are text, json, prometheus\n", format)
		return
	}

	mfs, err := s.src.Gatherer.Gather()
	if err != nil {
		s.log.Warn("admin: gathering metrics", zap.Error(err))
	}
	var lines []stat
	for _, l := range flatten(mfs) {
		if filter == nil || filter.MatchString(l.name) {
			lines = append(lines, l)
		}
	}

	if format == "json" {
		out := struct {
			Stats []jsonStat `json:"stats"`
		}{Stats: make([]jsonStat, 0, len(lines))}
		for _, l := range lines {
			out.Stats = append(out.Stats, jsonStat{Name: l.name, Value: jsonValue(l.value)})
		}
		writeJSON(w, out)
		return
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.name)
		b.WriteString(": ")
		b.WriteString(formatValue(l.value))
		b.WriteByte('\n')
	}
	text(w, http.StatusOK, "%s", b.String())
}

// jsonStat is one entry of /stats?format=json, as in Envoy's.
type jsonStat struct {
	Name  string `json:"name"`
	Value any    `json:"value"`
}

// jsonValue is v as a JSON number, or as a string when JSON cannot spell it (NaN, ±Inf).
func jsonValue(v float64) any {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return formatValue(v)
	}
	return v
}

// statsPrometheus answers /stats/prometheus with promhttp's exposition of the Gatherer. A
// ?filter=<regex> keeps the metric families whose name matches.
func (s *server) statsPrometheus(w http.ResponseWriter, r *http.Request) {
	if s.src.Gatherer == nil {
		unavailable(w, r)
		return
	}
	filter, ok := parseFilter(w, r)
	if !ok {
		return
	}
	if filter == nil {
		s.prom.ServeHTTP(w, r)
		return
	}
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := s.src.Gatherer.Gather()
		var kept []*dto.MetricFamily
		for _, mf := range mfs {
			if filter.MatchString(mf.GetName()) {
				kept = append(kept, mf)
			}
		}
		return kept, err
	})
	s.promHandler(g).ServeHTTP(w, r)
}

func (s *server) promHandler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      promLog{s.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// promLog carries promhttp's error lines to zap.
type promLog struct{ log *zap.Logger }

func (l promLog) Println(v ...any) {
	l.log.Warn("admin: serving /stats/prometheus", zap.Any("error", v))
}

// parseFilter reads ?filter=; a bad regex is answered with 400 naming the error, and ok is false.
// No filter gives nil.
func parseFilter(w http.ResponseWriter, r *http.Request) (re *regexp.Regexp, ok bool) {
	f := r.URL.Query().Get("filter")
	if f == "" {
		return nil, true
	}
	re, err := regexp.Compile(f)
	if err != nil {
		text(w, http.StatusBadRequest, "stats: bad filter %q: %v\n", f, err)
		return nil, false
	}
	return re, true
}

// flatten turns gathered families into /stats lines, in the order described at stats.
func flatten(mfs []*dto.MetricFamily) []stat {
	var out []stat
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			labels := m.GetLabel()
			switch {
			case m.Counter != nil:
				out = append(out, stat{series(name, labels), m.Counter.GetValue()})
			case m.Gauge != nil:
				out = append(out, stat{series(name, labels), m.Gauge.GetValue()})
			case m.Untyped != nil:
				out = append(out, stat{series(name, labels), m.Untyped.GetValue()})
			case m.Histogram != nil:
				out = appendHistogram(out, name, labels, m.Histogram)
			case m.Summary != nil:
				sm := m.Summary
				for _, q := range sm.GetQuantile() {
					out = append(out, stat{series(name, labels, "quantile", formatValue(q.GetQuantile())), q.GetValue()})
				}
				out = append(out,
					stat{series(name+"_count", labels), float64(sm.GetSampleCount())},
					stat{series(name+"_sum", labels), sm.GetSampleSum()})
			}
		}
	}
	return out
}

func appendHistogram(out []stat, name string, labels []*dto.LabelPair, h *dto.Histogram) []stat {
	count := float64(h.GetSampleCount())
	if h.SampleCountFloat != nil {
		count = h.GetSampleCountFloat()
	}
	inf := false
	for _, b := range h.GetBucket() {
		n := float64(b.GetCumulativeCount())
		if b.CumulativeCountFloat != nil {
			n = b.GetCumulativeCountFloat()
		}
		inf = inf || math.IsInf(b.GetUpperBound(), +1)
		out = append(out, stat{series(name+"_bucket", labels, "le", formatValue(b.GetUpperBound())), n})
	}
	if !inf && len(h.GetBucket()) > 0 {
		out = append(out, stat{series(name+"_bucket", labels, "le", "+Inf"), count})
	}
	return append(out,
		stat{series(name+"_count", labels), count},
		stat{series(name+"_sum", labels), h.GetSampleSum()})
}

// series spells name{label="value",...}, with an extra label (le, quantile) last; no labels gives
// the bare name. Values are quoted as Go quotes them, which escapes what Prometheus escapes.
func series(name string, labels []*dto.LabelPair, extra ...string) string {
	if len(labels) == 0 && len(extra) == 0 {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	sep := ""
	for _, l := range labels {
		b.WriteString(sep + l.GetName() + "=" + strconv.Quote(l.GetValue()))
		sep = ","
	}
	for i := 0; i+1 < len(extra); i += 2 {
		b.WriteString(sep + extra[i] + "=" + strconv.Quote(extra[i+1]))
		sep = ","
	}
	b.WriteByte('}')
	return b.String()
}

// formatValue spells v as a plain decimal: 3, 0.25, 1000000; NaN, +Inf, -Inf as Prometheus does.
func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, +1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
