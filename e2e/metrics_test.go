package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// adminURL is the admin endpoint as the pod's own processes reach it.
// TestMetricsCountKnownTraffic: a sends b a known mix of requests; both
// sidecars' /stats show exactly those counts, by direction, code, response
// flag and (on b) a's SPIFFE ID, in text and in JSON; the latency
// histograms count the same requests and place the slow ones above 250 ms;
// b's :15090 serves the same series to a scraper in another pod.
func TestMetricsCountKnownTraffic(t *testing.T) {
	m := newHTTPMesh(t, "", accessLogIn)
	podC := m.node.AddPod(t, "c") // no sidecar: a scraper, and a meshed address nothing answers on
	app := meshtest.NewHTTPClient(m.a.Pod, false)

	send := func(n int, url string, wantCode int, wantFlags string) {
		t.Helper()
		for range n {
			res, body := podHTTP(t, app, "GET", url)
			if res.StatusCode != wantCode || res.Header.Get("Pillion-Response-Flags") != wantFlags {
				t.Fatalf("GET %s: %s, flags %q, want %d, flags %q:\n%s", url, res.Status, res.Header.Get("Pillion-Response-Flags"), wantCode, wantFlags, body)
			}
		}
	}
	send(5, "http://"+m.bAddr+"/fixed", 200, "")
	send(3, "http://"+m.bAddr+"/status?code=503", 503, "") // the app's own 503
	send(2, "http://"+m.bAddr+"/sleep?ms=300", 204, "")
	// Nothing listens on b:8999: b's inbound router cannot connect to the
	// app and answers 503 UF itself; a relays that answer as is.
	send(2, "http://"+hostPort(m.b.Pod.IPv4, 8999)+"/", 503, "UF")
	// c has no sidecar and nothing on 8999: a's outbound router answers.
	send(1, "http://"+hostPort(podC.IPv4, 8999)+"/", 503, "UF")

	aID := meshtest.PodID(m.a.Pod)
	inbound := func(code, flags string) string {
		return fmt.Sprintf(`pillion_requests_total{code=%q,destination_service_name="",destination_service_namespace="",direction="inbound",flags=%q,peer=%q}`, code, flags, aID)
	}
	wantA := map[string]string{
		`pillion_requests_total{code="200",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""}`:  "5",
		`pillion_requests_total{code="204",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""}`:  "2",
		`pillion_requests_total{code="503",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""}`:  "5", // 3 from the app, 2 from b's sidecar
		`pillion_requests_total{code="503",destination_service_name="",destination_service_namespace="",direction="outbound",flags="UF",peer=""}`: "1",
	}
	wantB := map[string]string{
		inbound("200", "-"):  "5",
		inbound("204", "-"):  "2",
		inbound("503", "-"):  "3",
		inbound("503", "UF"): "2",
	}
	adminA, adminB := meshtest.NewHTTPClient(m.a.Pod, false), meshtest.NewHTTPClient(m.b.Pod, false)
	waitStats(t, adminA, "pillion_requests_total", wantA)
	waitStats(t, adminB, "pillion_requests_total", wantB)

	// Durations: every request, on both sides; upstream time only for the
	// requests whose upstream answered (on b, not the two UF).
	waitStats(t, adminA, "^pillion_.*duration_seconds_count", map[string]string{
		`pillion_request_duration_seconds_count{direction="inbound"}`:   "0",
		`pillion_request_duration_seconds_count{direction="outbound"}`:  "13",
		`pillion_upstream_duration_seconds_count{direction="inbound"}`:  "0",
		`pillion_upstream_duration_seconds_count{direction="outbound"}`: "12",
	})
	waitStats(t, adminB, "^pillion_.*duration_seconds_count", map[string]string{
		`pillion_request_duration_seconds_count{direction="inbound"}`:   "12",
		`pillion_request_duration_seconds_count{direction="outbound"}`:  "0",
		`pillion_upstream_duration_seconds_count{direction="inbound"}`:  "10",
		`pillion_upstream_duration_seconds_count{direction="outbound"}`: "0",
	})
	// The two /sleep?ms=300 requests are above the 0.25 s bucket, on b's
	// request and upstream histograms and on a's; +Inf holds everything.
	for _, c := range []struct {
		admin     *meshtest.HTTPClient
		dir       string
		req, upst int
	}{{adminA, "outbound", 13, 12}, {adminB, "inbound", 12, 10}} {
		stats := statLines(t, want200(t, c.admin, "GET", adminURL+"/stats?filter="+url.QueryEscape(`duration_seconds_bucket\{direction="`+c.dir+`"`)))
		for name, total := range map[string]int{"pillion_request_duration_seconds": c.req, "pillion_upstream_duration_seconds": c.upst} {
			bucket := func(le string) int {
				t.Helper()
				key := fmt.Sprintf("%s_bucket{direction=%q,le=%q}", name, c.dir, le)
				n, err := strconv.Atoi(stats[key])
				if err != nil {
					t.Fatalf("%s: no %s: %v", c.dir, key, stats)
				}
				return n
			}
			if got := bucket("+Inf"); got != total {
				t.Errorf("%s %s le=+Inf: %d, want %d", c.dir, name, got, total)
			}
			if got := bucket("0.25"); got > total-2 {
				t.Errorf("%s %s le=0.25: %d of %d requests, want at most %d: the two 300 ms requests are not below 250 ms", c.dir, name, got, total, total-2)
			}
		}
	}

	// JSON: the same lines with the same values.
	for name, c := range map[string]struct {
		admin *meshtest.HTTPClient
		want  map[string]string
	}{"a": {adminA, wantA}, "b": {adminB, wantB}} {
		var out struct {
			Stats []struct {
				Name  string
				Value json.Number
			}
		}
		body := want200(t, c.admin, "GET", adminURL+"/stats?format=json&filter=pillion_requests_total")
		dec := json.NewDecoder(strings.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&out); err != nil {
			t.Fatalf("%s: /stats?format=json: %v:\n%s", name, err, body)
		}
		got := map[string]string{}
		for _, s := range out.Stats {
			got[s.Name] = s.Value.String()
		}
		if !maps.Equal(got, c.want) {
			t.Errorf("%s: /stats?format=json has %v, want %v", name, got, c.want)
		}
	}

	// b's :15090 as a Prometheus server in another pod scrapes it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := podC.Command(ctx, testpod.Root, "curl", "-sS", "--fail", "--max-time", "5", "http://"+hostPort(m.b.Pod.IPv4, 15090)+"/stats/prometheus").CombinedOutput()
	if err != nil {
		t.Fatalf("scraping b's :15090 from c: %v: %s", err, out)
	}
	scraped := string(out)
	for series, v := range wantB {
		if !strings.Contains(scraped, "\n"+series+" "+v+"\n") {
			t.Errorf("b's :15090 has no line %q", series+" "+v)
		}
	}
	for _, line := range []string{
		"# TYPE pillion_requests_total counter",
		"# TYPE pillion_request_duration_seconds histogram",
		`pillion_request_duration_seconds_count{direction="inbound"} 12`,
		`pillion_connections_total{direction="inbound"} `,
		`pillion_mtls_connections_total{direction="inbound"} `,
	} {
		if !strings.Contains(scraped, "\n"+line) {
			t.Errorf("b's :15090 has no line starting %q", line)
		}
	}
	// A Prometheus in a meshed pod (a) scrapes b too: its sidecar sends a
	// peer's Prometheus port in the clear, as b's capture leaves it alone.
	out, err = m.a.Pod.Command(ctx, testpod.Root, "curl", "-sS", "--fail", "--max-time", "5", "http://"+hostPort(m.b.Pod.IPv4, 15090)+"/stats/prometheus").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "# TYPE pillion_requests_total counter") {
		t.Errorf("scraping b's :15090 from a meshed pod: %v: %.300s", err, out)
	}
}
