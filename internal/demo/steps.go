package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// The four steps of part 2, and the rounds of requests they send.

func (v *svc) balance() error {
	step(fmt.Sprintf("(1) The frontend application sends %d GET requests to http://%s:80/ (the Service)", requests, v.clusterIP))
	fmt.Println("  one by one, on ONE keep-alive connection: kube-proxy would send the whole connection to one pod;")
	fmt.Println("  the frontend's sidecar picks an endpoint per request (power of two choices over peak-EWMA latency)")
	fmt.Println("  and reaches it in mTLS, checking that it presents the identity discovery announced")
	before := v.counts()
	r := v.send(requests)
	v.print(r, before)
	if len(r.errors) > 0 {
		return fmt.Errorf("%d of %d requests failed: %v%s", requests-sum(r.answers), requests, r.errors, v.logTail())
	}
	if r.dials != 1 {
		return fmt.Errorf("the application opened %d connections, want 1", r.dials)
	}
	for _, p := range v.web[:3] {
		if r.answers[p.Name] == 0 {
			return fmt.Errorf("%s got none of the %d requests: not balanced per request (%v)", p.Name, requests, r.answers)
		}
	}
	return v.showDirect()
}

// showDirect points out attempts the frontend's sidecar sent to the
// ClusterIP itself rather than to an endpoint discovery announced: with
// no kube-proxy here, they cannot connect.
func (v *svc) showDirect() error {
	text, err := adminGet(v.frontend, "/clusters")
	if err != nil {
		return err
	}
	prefix := "::" + netip.AddrPortFrom(v.clusterIP, 80).String() + "::"
	stats := map[string]string{}
	for l := range strings.SplitSeq(text, "\n") {
		if _, rest, ok := strings.Cut(l, prefix); ok && strings.HasPrefix(l, "http") {
			k, val, _ := strings.Cut(rest, "::")
			stats[k] = val
		}
	}
	if len(stats) == 0 {
		return nil
	}
	fmt.Printf("  but %s attempt(s) went to %s:80 itself, not to a pod (its /clusters: a pool for the ClusterIP, cx_connect_fail %s):\n",
		stats["rq_total"], v.clusterIP, stats["cx_connect_fail"])
	fmt.Println("  the first request's lookup did not wait for discovery's answer; nothing listens on a ClusterIP here (no kube-proxy),")
	fmt.Println("  so the connect failed and the retry filter sent the request again, by then to a pod")
	return nil
}

// impostor adds web-3, whose sidecar presents web-0's SVID.
func (v *svc) impostor() error {
	web3 := v.web[3]
	step("(2) web-3 joins the Service (app=web, service account web-3), but its sidecar presents web-0's SVID")
	fmt.Println("  discovery announces each endpoint's identity from its Pod's service account: web-3 must present .../sa/web-3")
	changes, err := v.changesSent()
	if err != nil {
		return err
	}
	if err := v.runWeb(web3, meshtest.WriteConfig(v.s, serverConfig)); err != nil {
		return err
	}
	if _, err := v.waitEndpoints(v.web...); err != nil {
		return err
	}
	if err := v.waitPushed(changes); err != nil {
		return err
	}
	fmt.Printf("  %d requests again, one by one: a new endpoint, not yet heard from, is tried at once\n", requests)
	before := v.counts()
	r := v.send(requests)
	v.print(r, before)
	if n := v.hits[web3.Name].Load() - before[web3.Name]; n != 0 {
		return fmt.Errorf("web-3's application got %d requests: the frontend's sidecar did not check the identity discovery announced%s", n, v.logTail())
	}
	if err := v.showRefusal(web3); err != nil {
		return err
	}
	if len(r.errors) > 0 {
		return fmt.Errorf("%d of %d requests failed while web-3 was refused, despite the retry filter: %v%s", requests-sum(r.answers), requests, r.errors, v.logTail())
	}
	fmt.Println("  every request was answered: the attempt refused at the handshake was sent again, to another endpoint")
	return nil
}

// showRefusal prints the frontend sidecar's log line and stats for the
// refused handshake with web-3, and fails if there are none.
func (v *svc) showRefusal(web3 *testpod.Pod) error {
	sc := v.sidecars["frontend"]
	match := func(l map[string]any) bool {
		return l["upstream"] == endpoint(web3) && strings.HasPrefix(fmt.Sprint(l["msg"]), "refusing an endpoint")
	}
	var lines []map[string]any
	for deadline := time.Now().Add(5 * time.Second); len(lines) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		lines = findLogs(sc.Proxy.Output(), match)
	}
	if len(lines) == 0 {
		return fmt.Errorf("the frontend's sidecar logged no refusal of %s: web-3 was never tried%s", endpoint(web3), v.logTail())
	}
	l := lines[0]
	fmt.Printf("  the frontend's sidecar logged %d time(s):\n", len(lines))
	fmt.Printf("    %s %q\n      upstream=%v expected=%v\n      error=%v\n", l["level"], l["msg"], l["upstream"], l["expected"], l["error"])
	const filter = "tls_handshake_failures.*wrong_identity"
	stats, err := adminGet(v.frontend, "/stats?filter="+url.QueryEscape(filter))
	if err != nil {
		return err
	}
	fmt.Printf("  its GET /stats?filter=%s\n", filter)
	printLines(stats, func(l string) bool { return l != "" })
	if !strings.Contains(stats, `reason="wrong_identity"`) {
		return fmt.Errorf("the frontend's /stats shows no wrong_identity handshake failure:\n%s", stats)
	}
	eps, err := v.clusterEndpoints()
	if err != nil {
		return err
	}
	e := eps[endpoint(web3)]
	fmt.Printf("  its /clusters for web-3: rq_total %s, rq_error %s, ewma_ms %s (a failure counts as at least 1 s), health_flags %s\n",
		e["rq_total"], e["rq_error"], e["ewma_ms"], e["health_flags"])
	return nil
}

// logTail is the end of the frontend sidecar's log, for errors.
func (v *svc) logTail() string {
	lines := strings.Split(strings.TrimSpace(v.sidecars["frontend"].Proxy.Output()), "\n")
	return "\nthe frontend sidecar's last log lines:\n" + strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// findLogs returns the JSON log lines in out that match accepts.
func findLogs(out string, match func(map[string]any) bool) []map[string]any {
	var found []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && match(l) {
			found = append(found, l)
		}
	}
	return found
}

// deletion deletes web-1's Pod and shows that its endpoint leaves.
func (v *svc) deletion() error {
	web1 := v.web[1]
	step("(3) web-1's Pod is deleted (grace period 0)")
	fmt.Println("  its endpoint leaves the EndpointSlice, and discovery tells the frontend's sidecar")
	changes, err := v.changesSent()
	if err != nil {
		return err
	}
	if err := v.env.DeletePod(v.ctx, namespace, web1.Name, 0); err != nil {
		return err
	}
	if _, err := v.waitEndpoints(v.web[0], v.web[2], v.web[3]); err != nil {
		return err
	}
	if err := v.waitPushed(changes); err != nil {
		return err
	}
	fmt.Printf("  %d requests again, one by one (web-1's application still runs: only the Service no longer lists it):\n", requests)
	before := v.counts()
	r := v.send(requests)
	v.print(r, before)
	if n := v.hits[web1.Name].Load() - before[web1.Name]; n != 0 {
		return fmt.Errorf("web-1's application got %d requests after its Pod was deleted%s", n, v.logTail())
	}
	if len(r.errors) > 0 {
		return fmt.Errorf("%d of %d requests failed after web-1 left: %v%s", requests-sum(r.answers), requests, r.errors, v.logTail())
	}
	return nil
}

// showClusters prints the frontend sidecar's /clusters lines for the
// Service.
func (v *svc) showClusters() error {
	step("(4) The frontend sidecar's GET /clusters: the Service's endpoints (curl 127.0.0.1:15000/clusters in the pod)")
	fmt.Printf("  the lines of %s, some stats of each endpoint:\n", webCluster)
	text, err := adminGet(v.frontend, "/clusters")
	if err != nil {
		return err
	}
	keep := []string{"rq_total", "rq_error", "health_flags", "ewma_ms", "identity"}
	printLines(text, func(l string) bool {
		f := strings.SplitN(l, "::", 4)
		return len(f) == 4 && f[0] == webCluster && slices.Contains(keep, f[2])
	})
	fmt.Println("  (also cx_*, rq_active, protocol, weight and zone of each endpoint; ?format=json for Envoy's JSON shape)")
	return nil
}

// clusterEndpoints reads the frontend sidecar's /clusters lines for the
// Service: stat by name, by endpoint address.
func (v *svc) clusterEndpoints() (map[string]map[string]string, error) {
	text, err := adminGet(v.frontend, "/clusters")
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for l := range strings.SplitSeq(text, "\n") {
		f := strings.SplitN(l, "::", 4)
		if len(f) != 4 || f[0] != webCluster {
			continue
		}
		if out[f[1]] == nil {
			out[f[1]] = map[string]string{}
		}
		out[f[1]][f[2]] = f[3]
	}
	return out, nil
}

// endpoint is pod's endpoint address in the Service, as /clusters names it.
func endpoint(p *testpod.Pod) string { return netip.AddrPortFrom(p.IPv4, 8080).String() }

// changesMetric counts the destination states discovery sent because they
// changed, over all its streams (the frontend's is the only one).
const changesMetric = `pillion_discovery_updates_sent_total{reason="change"}`

// changesSent reads changesMetric from discovery's /metrics (0 before the
// first).
func (v *svc) changesSent() (int, error) {
	ctx, cancel := context.WithTimeout(v.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.metrics, nil)
	if err != nil {
		return 0, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("discovery's metrics: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, fmt.Errorf("discovery's metrics: %w", err)
	}
	for l := range strings.SplitSeq(string(body), "\n") {
		if val, ok := strings.CutPrefix(l, changesMetric+" "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			return int(n), err
		}
	}
	return 0, nil
}

// waitPushed waits until discovery has sent the frontend's sidecar more
// changes than before, and then none for 300 ms (an event may come in
// steps: a Pod, then its EndpointSlice), for at most 10 seconds. The
// sidecar applies what it received at its next request: its /clusters
// shows the endpoints as of the last request.
func (v *svc) waitPushed(before int) error {
	start := time.Now()
	last, lastAt := before, time.Now()
	for {
		n, err := v.changesSent()
		if err != nil {
			return err
		}
		if n != last {
			last, lastAt = n, time.Now()
		}
		if last > before && time.Since(lastAt) >= 300*time.Millisecond {
			fmt.Printf("  discovery pushed the change to the frontend's sidecar (its %s: %d → %d)\n", changesMetric, before, last)
			return nil
		}
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("discovery sent no change in 10s (%s stayed %d)", changesMetric, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// round is what one round of requests saw.
type round struct {
	answers map[string]int // by the body of a 200: the pod's name
	errors  map[string]int // by status or error, for what was not a 200
	dials   int32          // connections the application opened
}

// send makes n GET requests, one by one, from the frontend application to
// the Service's ClusterIP on its keep-alive client.
func (v *svc) send(n int) round {
	r := round{answers: map[string]int{}, errors: map[string]int{}}
	before := v.http.Dials.Load()
	target := "http://" + netip.AddrPortFrom(v.clusterIP, 80).String() + "/"
	for range n {
		if body, err := v.get(target); err != nil {
			r.errors[err.Error()]++
		} else {
			r.answers[body]++
		}
	}
	r.dials = v.http.Dials.Load() - before
	return r
}

// get makes one request and returns the body of a 200.
func (v *svc) get(target string) (string, error) {
	res, err := v.http.Get(target)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	switch {
	case err != nil:
		return "", err
	case res.StatusCode != http.StatusOK:
		return "", fmt.Errorf("%s %q", res.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// print shows the round: answers by pod, and the requests each web
// application counted itself since before.
func (v *svc) print(r round, before map[string]int64) {
	for _, p := range v.web {
		if hits := v.hits[p.Name]; hits != nil {
			fmt.Printf("    %-6s %2d answers   (its application counted %d)\n", p.Name, r.answers[p.Name], hits.Load()-before[p.Name])
		}
	}
	for _, e := range slices.Sorted(maps.Keys(r.errors)) {
		fmt.Printf("    FAILED %2d × %s\n", r.errors[e], e)
	}
	fmt.Printf("    over %d new connection(s) from the application\n", r.dials)
}

// counts is what each web application has answered so far.
func (v *svc) counts() map[string]int64 {
	out := map[string]int64{}
	for name, h := range v.hits {
		out[name] = h.Load()
	}
	return out
}

func sum(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}
