package istiometrics

import (
	"strconv"
	"sync"
	"testing"
)

// TestGRPCStatusLabelIsBounded: an upstream that answers gRPC requests
// with a fresh grpc-status each time makes no new series each time (the
// label once took the string as sent).
func TestGRPCStatusLabelIsBounded(t *testing.T) {
	m := New(Workload{})
	for i := range 1000 {
		m.RecordRequest(&Request{Conn: Conn{Reporter: Source}, GRPC: true, Code: 200, Flags: "-",
			GRPCStatus: "junk-" + strconv.Itoa(i)})
	}
	if n := len(gather(t, m)["istio_requests_total"].GetMetric()); n > 20 {
		t.Errorf("%d istio_requests_total series from one upstream's grpc-status values: unbounded", n)
	}
}

// TestNoSeriesAfterDisable: a RecordRequest that saw the family on, racing
// SetEnabled(false), makes no series after the Reset (it once did, and
// the series was exported while the family was off).
func TestNoSeriesAfterDisable(t *testing.T) {
	for round := range 200 {
		m := New(Workload{})
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := range 8 {
			wg.Go(func() {
				<-start
				for i := range 200 {
					m.RecordRequest(&Request{Conn: Conn{Reporter: Source}, Code: 100 + g*100 + i, Flags: "-"})
				}
			})
		}
		close(start)
		for len(m.seriesSnapshot()) < 50 {
		}
		m.SetEnabled(false)
		wg.Wait()
		if got := gather(t, m); len(got) != 0 {
			t.Fatalf("round %d: off, yet %d series of istio_requests_total exported", round, len(got["istio_requests_total"].GetMetric()))
		}
	}
}

func (m *Metrics) seriesSnapshot() map[requestKey]*requestSeries {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[requestKey]*requestSeries, len(m.series))
	for k, v := range m.series {
		out[k] = v
	}
	return out
}

// TestGRPCStatusLabel: gRPC's codes as they came; anything else unknown;
// with no grpc-status, Envoy's mapping of the HTTP status.
func TestGRPCStatusLabel(t *testing.T) {
	for _, tt := range []struct {
		status string
		code   int
		want   string
	}{
		{"0", 200, "0"}, {"16", 200, "16"}, {"17", 200, "unknown"}, {"junk", 200, "unknown"}, {"-1", 200, "unknown"},
		{"", 503, "14"}, {"", 404, "12"}, {"", 401, "16"}, {"", 200, "2"}, {"", 0, "unknown"},
	} {
		if got := grpcStatusLabel(tt.status, tt.code); got != tt.want {
			t.Errorf("grpcStatusLabel(%q, %d) = %q, want %q", tt.status, tt.code, got, tt.want)
		}
	}
}
