package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/sidecar"
)

// handshakeStats is what a pillion sidecar's metrics say of its mTLS
// handshakes.
type handshakeStats struct {
	peak     float64 // pillion_tls_handshakes_active_peak: the most in flight at once since it started
	queued   float64 // pillion_tls_handshakes_queued_total: how many had to wait for a slot
	timeouts float64 // pillion_tls_handshake_queue_timeouts_total: how many gave up waiting
}

// handshakesAll reads each proxy's handshakeStats; nil for a proxy
// without pillion's metrics.
func handshakesAll(proxies []proxy) ([]*handshakeStats, error) {
	out := make([]*handshakeStats, len(proxies))
	for i, p := range proxies {
		if p.metrics == nil {
			continue
		}
		v, err := scrape(p.metrics, "pillion_tls_handshakes_active_peak", "pillion_tls_handshakes_queued_total",
			"pillion_tls_handshake_queue_timeouts_total")
		if err != nil {
			return nil, fmt.Errorf("%s proxy: %w", p.side, err)
		}
		out[i] = &handshakeStats{peak: v[0], queued: v[1], timeouts: v[2]}
	}
	return out, nil
}

// scrape reads the sidecar's /stats/prometheus on the pod's loopback
// (never captured), as a scraper in the pod would, and returns the values
// of the series named, which must be unlabelled.
func scrape(pod *testpod.Pod, names ...string) ([]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(int(sidecar.PrometheusPort))) + sidecar.PrometheusPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	client := meshtest.NewHTTPClient(pod, false)
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: GET %s: %s", url, resp.Status)
	}
	values := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			values[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics: %s: %w", url, err)
	}
	out := make([]float64, len(names))
	for i, name := range names {
		v, ok := values[name]
		if !ok {
			return nil, fmt.Errorf("metrics: %s has no %s", url, name)
		}
		out[i] = v
	}
	return out, nil
}
