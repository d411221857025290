package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// adminURL is the admin endpoint as the pod's own processes reach it.
const adminURL = "http://127.0.0.1:15000"

// podHTTP makes one request from inside pod (as an application; 127.0.0.1
// is never captured) and returns the response, its body read.
func podHTTP(t *testing.T, c *meshtest.HTTPClient, method, url string, header ...string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return res, string(body)
}

// want200 is podHTTP that fails the test unless the answer is 200.
func want200(t *testing.T, c *meshtest.HTTPClient, method, url string) string {
	t.Helper()
	res, body := podHTTP(t, c, method, url)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s, want 200:\n%s", method, url, res.Status, body)
	}
	return body
}

// statLines parses /stats text ("name: value" lines) into a map.
func statLines(t *testing.T, text string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("/stats line %q is not \"name: value\":\n%s", line, text)
		}
		m[name] = value
	}
	return m
}

// waitStats reads /stats?filter=filter in the pod until its lines are
// exactly want, for up to 5 s: a request is counted once the proxy is done
// with it, which may be just after its client has the answer.
func waitStats(t *testing.T, c *meshtest.HTTPClient, filter string, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		text := want200(t, c, "GET", adminURL+"/stats?filter="+url.QueryEscape(filter))
		got := statLines(t, text)
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			var w strings.Builder
			for _, k := range slices.Sorted(maps.Keys(want)) {
				fmt.Fprintf(&w, "%s: %s\n", k, want[k])
			}
			t.Fatalf("/stats?filter=%s:\n%swant exactly:\n%s", filter, text, w.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAdminEndpoint: every admin path, read from inside pod a after traffic
// to b, answers with the content it describes; the controls act on the
// proxy and refuse what they should.
func TestAdminEndpoint(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	app := meshtest.NewHTTPClient(m.a.Pod, false)
	for range 3 {
		if got := want200(t, app, "GET", "http://"+m.bAddr+"/fixed"); got != "hello" {
			t.Fatalf("GET /fixed from a: %q", got)
		}
	}
	admin := meshtest.NewHTTPClient(m.a.Pod, false)
	get := func(path string) string {
		t.Helper()
		return want200(t, admin, "GET", adminURL+path)
	}

	t.Run("ready", func(t *testing.T) {
		if got := get("/ready"); got != "LIVE\n" {
			t.Errorf("/ready: %q, want LIVE", got)
		}
	})

	t.Run("listeners", func(t *testing.T) {
		want := "inbound::0.0.0.0:15006\ninbound::[::]:15006\noutbound::0.0.0.0:15001\noutbound::[::]:15001\n"
		if got := get("/listeners"); got != want {
			t.Errorf("/listeners:\n%swant:\n%s", got, want)
		}
		var out struct {
			ListenerStatuses []struct {
				Name         string `json:"name"`
				LocalAddress struct {
					SocketAddress struct {
						Address   string `json:"address"`
						PortValue int    `json:"port_value"`
					} `json:"socket_address"`
				} `json:"local_address"`
			} `json:"listener_statuses"`
		}
		decodeJSON(t, get("/listeners?format=json"), &out)
		var got []string
		for _, l := range out.ListenerStatuses {
			got = append(got, fmt.Sprintf("%s %s %d", l.Name, l.LocalAddress.SocketAddress.Address, l.LocalAddress.SocketAddress.PortValue))
		}
		if want := []string{"inbound 0.0.0.0 15006", "inbound :: 15006", "outbound 0.0.0.0 15001", "outbound :: 15001"}; !slices.Equal(got, want) {
			t.Errorf("/listeners?format=json: %q, want %q", got, want)
		}
	})

	t.Run("clusters", func(t *testing.T) {
		// a's requests to b went over one pooled HTTP/2 connection (mTLS)
		// to b's sidecar; b's went to the app over one HTTP/1.1 connection.
		text := get("/clusters")
		for _, line := range []string{
			"http1_pool::observability_name::http1_pool",
			"http2_pool::observability_name::http2_pool",
			"http2_pool::" + m.bAddr + "::cx_active::1",
			"http2_pool::" + m.bAddr + "::cx_total::1",
			"http2_pool::" + m.bAddr + "::rq_active::0",
			"http2_pool::" + m.bAddr + "::cx_connect_fail::0",
			"http2_pool::" + m.bAddr + "::protocol::HTTP/2",
		} {
			if !slices.Contains(strings.Split(text, "\n"), line) {
				t.Errorf("a's /clusters has no line %q:\n%s", line, text)
			}
		}
		if !strings.Contains(text, "http2_pool::"+m.bAddr+"::rq_total::") || strings.Contains(text, "http2_pool::"+m.bAddr+"::rq_total::0\n") {
			t.Errorf("a's /clusters does not count the requests sent to b:\n%s", text)
		}
		if strings.Contains(text, "http1_pool::"+m.bAddr) {
			t.Errorf("a's /clusters has b in its HTTP/1.1 pool (between sidecars it is HTTP/2):\n%s", text)
		}
		bText := want200(t, meshtest.NewHTTPClient(m.b.Pod, false), "GET", adminURL+"/clusters")
		// b's sidecar reaches its app at b's own address (from 127.0.0.6).
		if !slices.Contains(strings.Split(bText, "\n"), "http1_pool::"+m.bAddr+"::cx_active::1") {
			t.Errorf("b's /clusters has no pooled HTTP/1.1 connection to its app at %s:\n%s", m.bAddr, bText)
		}

		var out struct {
			ClusterStatuses []struct {
				Name         string `json:"name"`
				HostStatuses []struct {
					Address struct {
						SocketAddress struct {
							Address   string `json:"address"`
							PortValue int    `json:"port_value"`
						} `json:"socket_address"`
					} `json:"address"`
					Protocol string `json:"protocol"`
					Stats    []struct {
						Name  string `json:"name"`
						Value int    `json:"value"`
					} `json:"stats"`
				} `json:"host_statuses"`
			} `json:"cluster_statuses"`
		}
		decodeJSON(t, get("/clusters?format=json"), &out)
		found := false
		for _, c := range out.ClusterStatuses {
			for _, h := range c.HostStatuses {
				if c.Name == "http2_pool" && h.Address.SocketAddress.Address == m.bIP && h.Address.SocketAddress.PortValue == 8080 {
					for _, s := range h.Stats {
						found = found || (s.Name == "cx_active" && s.Value == 1)
					}
				}
			}
		}
		if !found {
			t.Errorf("/clusters?format=json has no http2_pool host %s:8080 with cx_active 1: %+v", m.bIP, out)
		}
	})

	t.Run("config_dump", func(t *testing.T) {
		body := get("/config_dump")
		var out struct {
			Flags      map[string]string `json:"flags"`
			ConfigFile struct {
				Mesh struct {
					Networks []string
					Mode     string
				}
			} `json:"config_file"`
			Applied time.Time `json:"applied"`
		}
		decodeJSON(t, body, &out)
		if out.Flags["config"] != m.configA || out.Flags["spiffe-socket"] != m.issuer.Socket(m.a.Pod) || out.Flags["admin-port"] != "15000" {
			t.Errorf("config_dump flags: config %q, spiffe-socket %q, admin-port %q; want %q, %q, 15000",
				out.Flags["config"], out.Flags["spiffe-socket"], out.Flags["admin-port"], m.configA, m.issuer.Socket(m.a.Pod))
		}
		if want := []string{"198.18.0.0/24", "fd00:ca7::/64"}; !slices.Equal(out.ConfigFile.Mesh.Networks, want) || out.ConfigFile.Mesh.Mode != "PERMISSIVE" {
			t.Errorf("config_dump mesh: networks %q, mode %q; want %q, PERMISSIVE:\n%s", out.ConfigFile.Mesh.Networks, out.ConfigFile.Mesh.Mode, want, body)
		}
		if out.Applied.IsZero() || time.Since(out.Applied) > time.Minute {
			t.Errorf("config_dump applied %v: not when the config was loaded", out.Applied)
		}
		if strings.Contains(body, "PRIVATE KEY") || strings.Contains(body, "CERTIFICATE-----") {
			t.Errorf("config_dump shows key or certificate material:\n%s", body)
		}
	})

	t.Run("certs", func(t *testing.T) {
		type cert struct {
			SerialNumber           string                 `json:"serial_number"`
			SubjectAltNames        []struct{ URI string } `json:"subject_alt_names"`
			SecondsUntilExpiration int64                  `json:"seconds_until_expiration"`
			ExpirationTime         string                 `json:"expiration_time"`
		}
		type certs struct {
			Certificates []struct {
				CertChain []cert `json:"cert_chain"`
				CACert    []cert `json:"ca_cert"`
			}
		}
		read := func(c *meshtest.HTTPClient) (svid cert, cas []cert) {
			t.Helper()
			body := want200(t, c, "GET", adminURL+"/certs")
			var out certs
			decodeJSON(t, body, &out)
			if len(out.Certificates) != 1 || len(out.Certificates[0].CertChain) != 1 || len(out.Certificates[0].CACert) != 1 {
				t.Fatalf("/certs: want one SVID and one CA:\n%s", body)
			}
			return out.Certificates[0].CertChain[0], out.Certificates[0].CACert
		}
		svidA, caA := read(admin)
		svidB, caB := read(meshtest.NewHTTPClient(m.b.Pod, false))
		for _, c := range []struct {
			svid cert
			id   string
		}{{svidA, meshtest.PodID(m.a.Pod)}, {svidB, meshtest.PodID(m.b.Pod)}} {
			if len(c.svid.SubjectAltNames) != 1 || c.svid.SubjectAltNames[0].URI != c.id {
				t.Errorf("/certs SVID SANs %+v, want %s", c.svid.SubjectAltNames, c.id)
			}
			exp, err := time.Parse(time.RFC3339, c.svid.ExpirationTime)
			if left := time.Until(exp); err != nil || left <= 0 || left > time.Hour {
				t.Errorf("/certs SVID expiration_time %q (%v): want within the SVIDs' hour", c.svid.ExpirationTime, err)
			}
			if c.svid.SecondsUntilExpiration <= 0 || c.svid.SecondsUntilExpiration > 3600 {
				t.Errorf("/certs SVID seconds_until_expiration %d, want 1-3600", c.svid.SecondsUntilExpiration)
			}
		}
		if svidA.SerialNumber == "" || svidA.SerialNumber == svidB.SerialNumber {
			t.Errorf("/certs SVID serials a %q, b %q: want two certificates", svidA.SerialNumber, svidB.SerialNumber)
		}
		if caA[0].SerialNumber == "" || caA[0].SerialNumber != caB[0].SerialNumber || len(caA[0].SubjectAltNames) != 1 || caA[0].SubjectAltNames[0].URI != "spiffe://"+meshtest.TrustDomain {
			t.Errorf("/certs CA: a %+v, b %+v; want the one CA of spiffe://%s on both", caA[0], caB[0], meshtest.TrustDomain)
		}
	})

	t.Run("server_info", func(t *testing.T) {
		ver, err := exec.Command(pillionBin, "version").Output()
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Version            string            `json:"version"`
			State              string            `json:"state"`
			Uptime             string            `json:"uptime_current_epoch"`
			CommandLineOptions map[string]string `json:"command_line_options"`
		}
		decodeJSON(t, get("/server_info"), &out)
		if out.Version == "" || !strings.HasPrefix(string(ver), "pillion "+out.Version+" (") {
			t.Errorf("server_info version %q; pillion version says %q", out.Version, ver)
		}
		if out.State != "LIVE" || !regexp.MustCompile(`^[0-9]+s$`).MatchString(out.Uptime) || out.CommandLineOptions["config"] != m.configA {
			t.Errorf("server_info: state %q, uptime %q, config flag %q; want LIVE, <n>s, %s", out.State, out.Uptime, out.CommandLineOptions["config"], m.configA)
		}
	})

	t.Run("help and unknown paths", func(t *testing.T) {
		help := get("/help")
		paths := []string{"/ready:", "/stats:", "/stats/prometheus:", "/clusters:", "/listeners:", "/config_dump:", "/certs:",
			"/server_info:", "/help:", "/logging (POST):", "/drain (POST):", "/quitquitquit (POST):",
			"/healthcheck/fail (POST):", "/healthcheck/ok (POST):", "/debug/pprof/:"}
		for _, p := range paths {
			if !strings.Contains(help, "\n  "+p+" ") {
				t.Errorf("/help does not list %q:\n%s", p, help)
			}
		}
		res, body := podHTTP(t, admin, "GET", adminURL+"/nope")
		if res.StatusCode != http.StatusNotFound || !strings.HasPrefix(body, `admin: no such path "/nope"`) || !strings.HasSuffix(body, help) {
			t.Errorf("GET /nope: %s, want 404 naming it, then the list of paths:\n%s", res.Status, body)
		}
	})

	t.Run("stats/prometheus and stats errors", func(t *testing.T) {
		body := get("/stats/prometheus?filter=" + url.QueryEscape("^pillion_requests_total$"))
		want := `pillion_requests_total{code="200",destination_service_name="",destination_service_namespace="",direction="outbound",flags="-",peer=""} 3`
		if !strings.Contains(body, "# TYPE pillion_requests_total counter\n"+want+"\n") || strings.Contains(body, "go_") {
			t.Errorf("/stats/prometheus?filter=^pillion_requests_total$: want its family only, with %q:\n%s", want, body)
		}
		res, body := podHTTP(t, admin, "GET", adminURL+"/stats?filter="+url.QueryEscape("("))
		if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `bad filter "("`) {
			t.Errorf("/stats?filter=(: %s %q, want 400 naming the filter", res.Status, body)
		}
	})

	t.Run("pprof", func(t *testing.T) {
		index := get("/debug/pprof/")
		for _, p := range []string{"goroutine", "heap", "profile"} {
			if !strings.Contains(index, p) {
				t.Errorf("/debug/pprof/ does not list %q:\n%s", p, index)
			}
		}
		if cmdline := get("/debug/pprof/cmdline"); !strings.Contains(cmdline, "\x00proxy\x00") || !strings.Contains(cmdline, "\x00--config="+m.configA) {
			t.Errorf("/debug/pprof/cmdline: %q, not the proxy's", cmdline)
		}
	})

	t.Run("logging", func(t *testing.T) {
		// A connection that the client resets before showing its protocol
		// is logged at debug only.
		closeEarly := func() {
			t.Helper()
			c, err := m.a.Pod.Dial(context.Background(), "tcp", m.bAddr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).SetLinger(0) // close with a RST
			c.Close()
		}
		const debugMsg = "connection ended during protocol detection"
		isDebug := func(l meshtest.LogLine) bool { return l.Level == "debug" && l.Msg == debugMsg }
		defer podHTTP(t, admin, "POST", adminURL+"/logging?level=info")

		// meshtest starts its sidecars at debug (their line per connection).
		if got := want200(t, admin, "POST", adminURL+"/logging"); got != "level: debug\n" {
			t.Errorf("POST /logging: %q, want level: debug", got)
		}
		if got := want200(t, admin, "POST", adminURL+"/logging?level=info"); got != "level: info\n" {
			t.Errorf("POST /logging?level=info: %q", got)
		}
		if got := want200(t, admin, "POST", adminURL+"/logging"); got != "level: info\n" {
			t.Errorf("POST /logging: %q, want level: info", got)
		}
		closeEarly()
		time.Sleep(300 * time.Millisecond)
		if n := countLogs(m.a, isDebug); n != 0 {
			t.Fatalf("at level info the proxy logged %d debug lines", n)
		}
		if got := want200(t, admin, "POST", adminURL+"/logging?level=debug"); got != "level: debug\n" {
			t.Errorf("POST /logging?level=debug: %q", got)
		}
		closeEarly()
		if _, ok := m.a.WaitLog(isDebug, 5*time.Second); !ok {
			t.Errorf("after POST /logging?level=debug, no debug line %q:\n%s", debugMsg, m.a.Proxy.Output())
		}
		if got := want200(t, admin, "POST", adminURL+"/logging"); got != "level: debug\n" {
			t.Errorf("POST /logging after the change: %q, want level: debug", got)
		}
		res, body := podHTTP(t, admin, "POST", adminURL+"/logging?level=loud")
		if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"loud"`) || !strings.Contains(body, "debug, info, warn, error") {
			t.Errorf("POST /logging?level=loud: %s %q, want 400 naming the valid levels", res.Status, body)
		}
		if got := want200(t, admin, "POST", adminURL+"/logging"); got != "level: debug\n" {
			t.Errorf("a bad level changed the level: %q", got)
		}
	})

	t.Run("controls refuse GET and cross-origin POST", func(t *testing.T) {
		for _, p := range []string{"/quitquitquit", "/drain", "/healthcheck/fail"} {
			res, body := podHTTP(t, admin, "GET", adminURL+p)
			if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "POST" || !strings.Contains(body, "use POST") {
				t.Errorf("GET %s: %s, Allow %q, %q; want 405, Allow: POST", p, res.Status, res.Header.Get("Allow"), body)
			}
		}
		// A web page's POST (a browser marks it cross-site) is refused too.
		res, _ := podHTTP(t, admin, "POST", adminURL+"/quitquitquit", "Sec-Fetch-Site", "cross-site", "Origin", "http://evil.example")
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site POST /quitquitquit: %s, want 403", res.Status)
		}
		time.Sleep(200 * time.Millisecond)
		select {
		case <-m.a.Proxy.Done():
			t.Fatalf("the proxy exited:\n%s", m.a.Proxy.Output())
		default:
		}
		if got := get("/ready"); got != "LIVE\n" {
			t.Errorf("/ready after refused controls: %q, want LIVE", got)
		}
		if got := want200(t, app, "GET", "http://"+m.bAddr+"/fixed"); got != "hello" {
			t.Errorf("traffic after refused controls: %q", got)
		}
	})

	t.Run("healthcheck fail and ok", func(t *testing.T) {
		podC := m.node.AddPod(t, "c") // kubelet's view: from outside a
		kubelet := meshtest.NewHTTPClient(podC, false)
		probe := "http://" + hostPort(m.a.Pod.IPv4, 15021) + "/healthz/ready"
		check := func(wantCode int, wantState string) {
			t.Helper()
			for name, c := range map[string]struct {
				client *meshtest.HTTPClient
				url    string
			}{"a's :15021": {admin, "http://127.0.0.1:15021/healthz/ready"}, "c to a's :15021": {kubelet, probe}, "admin /ready": {admin, adminURL + "/ready"}} {
				res, body := podHTTP(t, c.client, "GET", c.url)
				if res.StatusCode != wantCode || !strings.HasPrefix(body, wantState) {
					t.Errorf("%s: %s %q, want %d %s", name, res.Status, body, wantCode, wantState)
				}
			}
		}
		check(200, "LIVE\n")
		if got := want200(t, admin, "POST", adminURL+"/healthcheck/fail"); got != "OK\n" {
			t.Errorf("POST /healthcheck/fail: %q", got)
		}
		check(503, "DRAINING")
		var info struct{ State string }
		decodeJSON(t, get("/server_info"), &info)
		if info.State != "DRAINING" {
			t.Errorf("server_info state %q while failed, want DRAINING", info.State)
		}
		if got := want200(t, admin, "POST", adminURL+"/healthcheck/ok"); got != "OK\n" {
			t.Errorf("POST /healthcheck/ok: %q", got)
		}
		check(200, "LIVE\n")
	})
}

// TestAdminPortOnlyInsideThePod: a's admin endpoint cannot be reached from
// another pod, directly (connection refused: it listens on 127.0.0.1 only)
// nor through the mesh; a's :15021 and :15090 can.
func TestAdminPortOnlyInsideThePod(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	podC := m.node.AddPod(t, "c") // no sidecar
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if got := want200(t, meshtest.NewHTTPClient(m.a.Pod, false), "GET", adminURL+"/ready"); got != "LIVE\n" {
		t.Fatalf("a's own /ready: %q", got)
	}
	for _, ip := range []netip.Addr{m.a.Pod.IPv4, m.a.Pod.IPv6} {
		addr := hostPort(ip, 15000)
		// From b, a direct connection: as the proxy's user, which the
		// capture lets through.
		out, err := m.b.Pod.Command(ctx, testpod.ProxyUser, "curl", "-sS", "--max-time", "5", "http://"+addr+"/ready").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 7 {
			t.Errorf("from b (uid 1337) to %s: %v %q; want curl's exit 7, connection refused", addr, err, out)
		}
		// From c, without a sidecar.
		if c, err := podC.Dial(ctx, "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
			if c != nil {
				c.Close()
			}
			t.Errorf("from c to %s: %v; want connection refused", addr, err)
		}
		// From b's application, through both sidecars: b's cannot connect.
		out, err = m.b.Pod.Command(ctx, testpod.Root, "curl", "-sS", "--max-time", "5", "-D", "-", "http://"+addr+"/ready").CombinedOutput()
		head := strings.ToLower(string(out))
		if err != nil || !strings.HasPrefix(head, "http/1.1 503") || !strings.Contains(head, "pillion-response-flags: uf") || !strings.Contains(head, "connection refused") {
			t.Errorf("from b's app to %s: %v, want 503 UF, connection refused:\n%s", addr, err, out)
		}

		// :15021 is on every address.
		probe := "http://" + hostPort(ip, 15021) + "/healthz/ready"
		out, err = m.b.Pod.Command(ctx, testpod.ProxyUser, "curl", "-sS", "--fail", "--max-time", "5", probe).CombinedOutput()
		if err != nil || string(out) != "LIVE\n" {
			t.Errorf("from b (uid 1337) %s: %v %q, want LIVE", probe, err, out)
		}
	}
	out, err := podC.Command(ctx, testpod.Root, "curl", "-sS", "--fail", "--max-time", "5", "http://"+hostPort(m.a.Pod.IPv6, 15090)+"/stats/prometheus").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\n# TYPE pillion_connections_total counter\n") {
		t.Errorf("from c to a's [IPv6]:15090/stats/prometheus: %v\n%.500s", err, out)
	}
}
