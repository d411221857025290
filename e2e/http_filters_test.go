package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// counter is an app on :9090 of b that answers every request with status
// and counts the requests and the attempt numbers the sidecar sent.
type counter struct {
	status   atomic.Int32
	requests atomic.Int32
	mu       sync.Mutex
	attempts []string
}

func serveCounter(t *testing.T, pod *testpod.Pod, status int) *counter {
	c := &counter{}
	c.status.Store(int32(status))
	meshtest.ServeHTTP(t, pod, ":9090", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.requests.Add(1)
		c.mu.Lock()
		c.attempts = append(c.attempts, r.Header.Get("Pillion-Attempt-Count"))
		c.mu.Unlock()
		w.WriteHeader(int(c.status.Load()))
	}))
	return c
}

func TestHTTPRetryIsBounded(t *testing.T) {
	m := newHTTPMesh(t, `outbound:
  filters:
    - accesslog: {}
    - retry: {attempts: 3, on: ["503"], backoff: 1ms}
`, "")
	app := serveCounter(t, m.b.Pod, http.StatusServiceUnavailable)
	c := newPodClient(t, m.a.Pod, false)
	url := "http://" + hostPort(m.b.Pod.IPv4, 9090) + "/"

	res, _ := c.do(t, newRequest(t, "GET", url, nil))
	if res.StatusCode != 503 || app.requests.Load() != 3 {
		t.Errorf("GET: %d after %d requests at the app, want the app's 503 after exactly 3", res.StatusCode, app.requests.Load())
	}
	if got := strings.Join(app.attempts, ","); got != "1,2,3" {
		t.Errorf("attempt counts the app saw = %s, want 1,2,3", got)
	}
	l, ok := m.a.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.Method == "GET" }, 5*time.Second)
	if !ok || l.Flags != "URX" || l.Code != 503 {
		t.Errorf("a's access log: %+v, want code 503 with flag URX", l)
	}

	// A POST may have been acted on: a 503 is not retried.
	app.requests.Store(0)
	res, _ = c.do(t, newRequest(t, "POST", url, strings.NewReader("order #1")))
	if res.StatusCode != 503 || app.requests.Load() != 1 {
		t.Errorf("POST: %d after %d requests at the app, want 503 after exactly 1", res.StatusCode, app.requests.Load())
	}

	// Once the app recovers, the retry hides one failure from the client.
	app.requests.Store(0)
	var failures atomic.Int32
	failures.Store(1)
	meshtest.ServeHTTP(t, m.b.Pod, ":9091", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.requests.Add(1)
		if failures.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "fine")
	}))
	res, body := c.do(t, newRequest(t, "GET", "http://"+hostPort(m.b.Pod.IPv4, 9091)+"/", nil))
	if res.StatusCode != 200 || string(body) != "fine" || app.requests.Load() != 2 {
		t.Errorf("GET after one 503: %d %q after %d requests, want 200 \"fine\" after 2", res.StatusCode, body, app.requests.Load())
	}
}

func TestHTTPRateLimit(t *testing.T) {
	m := newHTTPMesh(t, "", `inbound:
  filters:
    - ratelimit: {requestsPerSecond: 0.1, burst: 3}
`)
	app := serveCounter(t, m.b.Pod, http.StatusOK)
	c := newPodClient(t, m.a.Pod, false)
	var codes []string
	for range 6 {
		res, _ := c.do(t, newRequest(t, "GET", "http://"+hostPort(m.b.Pod.IPv4, 9090)+"/", nil))
		codes = append(codes, fmt.Sprintf("%d %s", res.StatusCode, res.Header.Get("Pillion-Response-Flags")))
	}
	want := "200 ,200 ,200 ,429 RL,429 RL,429 RL"
	if got := strings.Join(codes, ","); got != want {
		t.Errorf("6 requests with a burst of 3: %s, want %s", got, want)
	}
	if n := app.requests.Load(); n != 3 {
		t.Errorf("the app saw %d requests, want 3: the limited ones never reach it", n)
	}
}

// TestHTTPReloadUnderLoad rewrites a's config while clients keep sending:
// not one request may fail, the new chain must take over, and a broken
// config must be refused with the last good one still serving.
func TestHTTPReloadUnderLoad(t *testing.T) {
	version := func(v string) string {
		return "outbound:\n  filters:\n    - headers: {response: {set: {x-config: " + v + "}}}\n"
	}
	m := newHTTPMesh(t, version("v1"), "")
	url := "http://" + m.bAddr + "/echo"

	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		seen     = map[string]int{}
		failures []string
	)
	for range 4 {
		c := newPodClient(t, m.a.Pod, false)
		wg.Go(func() {
			deadline := time.Now().Add(30 * time.Second) // bounded even if the test loses track
			for !stop.Load() && time.Now().Before(deadline) {
				res, err := c.Get(url)
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != 200 {
						failures = append(failures, res.Status)
					}
					seen[res.Header.Get("X-Config")]++
				}
				mu.Unlock()
			}
		})
	}
	waitSeen := func(v string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			n := seen[v]
			mu.Unlock()
			if n > 0 {
				return
			}
		}
		t.Fatalf("no response with x-config %s within 10 s", v)
	}
	waitSeen("v1")
	meshtest.UpdateConfig(t, m.configA, version("v2"))
	waitSeen("v2")
	mu.Lock()
	seen = map[string]int{}
	mu.Unlock()

	meshtest.UpdateConfig(t, m.configA, "outbound: {filters: [{headers: {respnse: {}}}]}\n")
	if _, ok := m.a.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config refused: the running config stays" }, 10*time.Second); !ok {
		t.Errorf("a bad config was not refused in the log:\n%s", m.a.Proxy.Output())
	}
	time.Sleep(300 * time.Millisecond) // keep the load on the kept config a moment
	stop.Store(true)
	wg.Wait()

	if len(failures) > 0 {
		t.Errorf("%d requests failed during the reloads, want 0; first: %s", len(failures), failures[0])
	}
	if seen["v1"] != 0 || seen["v2"] == 0 {
		t.Errorf("after the reload and the refused config: %v, want only v2", seen)
	}
	l, _ := m.a.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config refused: the running config stays" }, 0)
	if want := m.configA + `: outbound.filters[0].headers.respnse: unknown field (known: request, response)`; l.Error != want {
		t.Errorf("refusal says %q, want it to name the field: %s", l.Error, want)
	}
}
