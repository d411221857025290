package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// echoSaw sends GET /echo from pc with the given x-request-id ("": none)
// and returns the request ID values the app saw.
func echoSaw(t *testing.T, pc *podClient, addr, id string) []string {
	t.Helper()
	req := newRequest(t, "GET", "http://"+addr+"/echo", nil)
	if id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	res, body := pc.do(t, req)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /echo: %s: %s", res.Status, body)
	}
	var saw appSaw
	if err := json.Unmarshal(body, &saw); err != nil {
		t.Fatalf("GET /echo: %v: %s", err, body)
	}
	return saw.Header.Values("X-Request-Id")
}

// TestRequestIDByDefault: sidecars with no config file keep the
// application's x-request-id or make one, a UUID v4 per request, as
// Envoy's and Istio's do by default; at the default log level they write
// no line per connection, which is there at debug.
func TestRequestIDByDefault(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv", "curl")
	node := testpod.NewNode(t)
	podA, podB := node.AddPod(t, "a"), node.AddPod(t, "b")
	serveApp(t, podB, ":8080")
	addr := hostPort(podB.IPv4, 8080)
	info := []string{"--log-level=info"} // the default, over meshtest's debug
	a := meshtest.Inject(t, pillionBin, podA, nil, info)
	b := meshtest.Inject(t, pillionBin, podB, nil, info)

	for _, p := range clientProtocols {
		t.Run(p.name, func(t *testing.T) {
			pc := newPodClient(t, podA, p.h2c)
			first, second := echoSaw(t, pc, addr, ""), echoSaw(t, pc, addr, "")
			for _, got := range [][]string{first, second} {
				if len(got) != 1 || !uuidV4.MatchString(got[0]) {
					t.Errorf("without an ID the app saw x-request-id %q, want one UUID v4", got)
				}
			}
			if slices.Equal(first, second) {
				t.Errorf("two requests got the same ID %q", first)
			}
			if got := echoSaw(t, pc, addr, "from-the-app-"+p.name); !slices.Equal(got, []string{"from-the-app-" + p.name}) {
				t.Errorf("the app's own x-request-id arrived as %q, want it kept", got)
			}
			pc.CloseIdleConnections() // the connections end: their line, if any, is written now
		})
	}

	isConn := func(l meshtest.LogLine) bool { return l.Msg == "connection" }
	time.Sleep(500 * time.Millisecond) // the proxies' output comes through a pipe
	for _, sc := range []*meshtest.Sidecar{a, b} {
		if n := countLogs(sc, isConn); n != 0 {
			t.Errorf("at info, %s's sidecar wrote %d lines per connection, want none:\n%s", sc.Pod.Name, n, sc.Proxy.Output())
		}
	}
	// Where a user looks: the outbound chain in /config_dump.
	admin := meshtest.NewHTTPClient(podA, false)
	var dump struct {
		ConfigFile struct{ Inbound, Outbound []struct{ Name, Path string } } `json:"config_file"`
	}
	decodeJSON(t, want200(t, admin, "GET", adminURL+"/config_dump"), &dump)
	if got := fmt.Sprint(dump.ConfigFile.Outbound, dump.ConfigFile.Inbound); got != "[{requestid outbound.requestid} {router outbound.router}] [{router inbound.router}]" {
		t.Errorf("/config_dump chains: %s, want requestid then the router outbound, the router alone inbound", got)
	}
	// At debug the line is there: the check above could fail.
	want200(t, admin, "POST", adminURL+"/logging?level=debug")
	pc := newPodClient(t, podA, false)
	echoSaw(t, pc, addr, "")
	pc.CloseIdleConnections()
	l, ok := a.WaitLog(func(l meshtest.LogLine) bool { return isConn(l) && l.Dst == addr }, 5*time.Second)
	if !ok || l.Level != "debug" || l.Direction != "outbound" {
		t.Errorf("at debug, a's connection line is %+v, want one at debug level:\n%s", l, a.Proxy.Output())
	}
}

// TestAccessLogEnvoyFormat: a's outbound access log in Envoy's default
// text format and b's inbound one in JSON both carry the request ID the
// app saw, made by a's sidecar or the application's own; a bad format is
// refused on reload, naming the field, and the old config keeps writing.
func TestAccessLogEnvoyFormat(t *testing.T) {
	const envoyA = "outbound: {filters: [{accesslog: {format: envoy}}]}\n"
	m := newHTTPMesh(t, envoyA, "inbound: {filters: [{accesslog: {}}]}\n")
	pc := newPodClient(t, m.a.Pod, false)

	// envoyLine waits for a's text line carrying id and returns its
	// fields: start, request line, code, flags, bytes in and out,
	// duration, upstream time, then the quoted XFF, user agent, ID,
	// authority and upstream host.
	line := regexp.MustCompile(`^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "([^"]*)" (\d+) (\S+) (\d+) (\d+) (\d+) (\S+) "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)"$`)
	envoyLine := func(id string) []string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, l := range strings.Split(m.a.Proxy.Output(), "\n") {
				if f := line.FindStringSubmatch(l); f != nil && f[11] == id {
					return f[1:]
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("a wrote no Envoy-format line with request ID %q:\n%s", id, m.a.Proxy.Output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	jsonLine := func(id string) meshtest.LogLine {
		t.Helper()
		l, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.RequestID == id }, 5*time.Second)
		if !ok {
			t.Fatalf("b wrote no JSON access line with request ID %q:\n%s", id, m.b.Proxy.Output())
		}
		return l
	}

	made := echoSaw(t, pc, m.bAddr, "")
	if len(made) != 1 || !uuidV4.MatchString(made[0]) {
		t.Fatalf("the app saw x-request-id %q, want one UUID v4 made by a's sidecar", made)
	}
	for _, id := range []string{made[0], "kept-from-the-app"} {
		if id != made[0] {
			if got := echoSaw(t, pc, m.bAddr, id); !slices.Equal(got, []string{id}) {
				t.Errorf("the app's own x-request-id arrived as %q, want %q", got, id)
			}
		}
		f := envoyLine(id)
		got := fmt.Sprintf("%q %s %s %s | %q %q %q %q", f[1], f[2], f[3], f[4], f[8], f[9], f[11], f[12])
		want := fmt.Sprintf("%q 200 - 0 | %q %q %q %q", "GET /echo HTTP/1.1", "-", "Go-http-client/1.1", m.bAddr, m.bAddr)
		if got != want {
			t.Errorf("a's Envoy line %q:\n got  %s\n want %s", f, got, want)
		}
		if f[5] == "0" || f[7] == "-" {
			t.Errorf("a's Envoy line %q: want the bytes sent and the upstream service time", f)
		}
		if l := jsonLine(id); l.Direction != "inbound" || l.Path != "/echo" || l.Code != 200 {
			t.Errorf("b's access line %+v, want inbound GET /echo 200", l)
		}
	}
	if n := countLogs(m.a, func(l meshtest.LogLine) bool { return l.Msg == "access" }); n != 0 {
		t.Errorf("a wrote %d JSON access lines besides the Envoy ones, want none", n)
	}

	meshtest.UpdateConfig(t, m.configA, "outbound: {filters: [{accesslog: {format: text}}]}\n")
	refused, ok := m.a.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config refused: the running config stays" }, 10*time.Second)
	if want := `outbound.filters[0].accesslog.format: want json or envoy, got "text"`; !ok || !strings.HasSuffix(refused.Error, want) {
		t.Errorf("refusal %q, want it to end %q", refused.Error, want)
	}
	envoyLine(echoSaw(t, pc, m.bAddr, "after-the-refusal")[0]) // still the old config's format
}
