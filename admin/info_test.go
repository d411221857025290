package admin

import (
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testClusters() []Cluster {
	return []Cluster{
		{Name: "outbound|8080||reviews", Endpoints: []Endpoint{
			{Address: "10.0.0.9:8080", Protocol: "http2", ActiveConns: 1, TotalConns: 1, ActiveRequests: 3, TotalRequests: 40},
			{Address: "10.0.0.7:8080", Protocol: "http2", ActiveConns: 2, IdleConns: 1, TotalConns: 5, ConnectFailures: 1,
				ActiveRequests: 1, TotalRequests: 17},
		}},
		{Name: "inbound|9080||", Endpoints: []Endpoint{{Address: "127.0.0.1:9080", Protocol: "tcp", ActiveConns: 4, TotalConns: 9}}},
		{Name: "outbound|5432||db"},
	}
}

func TestClusters(t *testing.T) {
	h := New(Sources{Clusters: testClusters}, nil)
	check(t, do(t, h, "GET", "/clusters"), 200, `inbound|9080||::observability_name::inbound|9080||
inbound|9080||::127.0.0.1:9080::cx_active::4
inbound|9080||::127.0.0.1:9080::cx_connect_fail::0
inbound|9080||::127.0.0.1:9080::cx_idle::0
inbound|9080||::127.0.0.1:9080::cx_total::9
inbound|9080||::127.0.0.1:9080::rq_active::0
inbound|9080||::127.0.0.1:9080::rq_total::0
inbound|9080||::127.0.0.1:9080::protocol::tcp
outbound|5432||db::observability_name::outbound|5432||db
outbound|8080||reviews::observability_name::outbound|8080||reviews
outbound|8080||reviews::10.0.0.7:8080::cx_active::2
outbound|8080||reviews::10.0.0.7:8080::cx_connect_fail::1
outbound|8080||reviews::10.0.0.7:8080::cx_idle::1
outbound|8080||reviews::10.0.0.7:8080::cx_total::5
outbound|8080||reviews::10.0.0.7:8080::rq_active::1
outbound|8080||reviews::10.0.0.7:8080::rq_total::17
outbound|8080||reviews::10.0.0.7:8080::protocol::http2
outbound|8080||reviews::10.0.0.9:8080::cx_active::1
outbound|8080||reviews::10.0.0.9:8080::cx_connect_fail::0
outbound|8080||reviews::10.0.0.9:8080::cx_idle::0
outbound|8080||reviews::10.0.0.9:8080::cx_total::1
outbound|8080||reviews::10.0.0.9:8080::rq_active::3
outbound|8080||reviews::10.0.0.9:8080::rq_total::40
outbound|8080||reviews::10.0.0.9:8080::protocol::http2
`)
	checkJSON(t, do(t, h, "GET", "/clusters?format=json"), `{"cluster_statuses":[
		{"name":"inbound|9080||","host_statuses":[
			{"address":{"socket_address":{"address":"127.0.0.1","port_value":9080}},"protocol":"tcp","stats":[
				{"name":"cx_active","type":"GAUGE","value":4},
				{"name":"cx_connect_fail","type":"COUNTER","value":0},
				{"name":"cx_idle","type":"GAUGE","value":0},
				{"name":"cx_total","type":"COUNTER","value":9},
				{"name":"rq_active","type":"GAUGE","value":0},
				{"name":"rq_total","type":"COUNTER","value":0}]}]},
		{"name":"outbound|5432||db","host_statuses":[]},
		{"name":"outbound|8080||reviews","host_statuses":[
			{"address":{"socket_address":{"address":"10.0.0.7","port_value":8080}},"protocol":"http2","stats":[
				{"name":"cx_active","type":"GAUGE","value":2},
				{"name":"cx_connect_fail","type":"COUNTER","value":1},
				{"name":"cx_idle","type":"GAUGE","value":1},
				{"name":"cx_total","type":"COUNTER","value":5},
				{"name":"rq_active","type":"GAUGE","value":1},
				{"name":"rq_total","type":"COUNTER","value":17}]},
			{"address":{"socket_address":{"address":"10.0.0.9","port_value":8080}},"protocol":"http2","stats":[
				{"name":"cx_active","type":"GAUGE","value":1},
				{"name":"cx_connect_fail","type":"COUNTER","value":0},
				{"name":"cx_idle","type":"GAUGE","value":0},
				{"name":"cx_total","type":"COUNTER","value":1},
				{"name":"rq_active","type":"GAUGE","value":3},
				{"name":"rq_total","type":"COUNTER","value":40}]}]}]}`)
	check(t, do(t, h, "GET", "/clusters?format=xml"), 400, "admin: unknown format \"xml\": valid formats are text, json\n")

	// The caller's slices are not reordered.
	cs := testClusters()
	do(t, New(Sources{Clusters: func() []Cluster { return cs }}, nil), "GET", "/clusters")
	if diff := cmp.Diff(testClusters(), cs); diff != "" {
		t.Errorf("/clusters changed its input (-want +got):\n%s", diff)
	}
	checkJSON(t, do(t, New(Sources{Clusters: func() []Cluster { return nil }}, nil), "GET", "/clusters?format=json"),
		`{"cluster_statuses":[]}`)
}

func TestListeners(t *testing.T) {
	h := New(Sources{Listeners: func() []Listener {
		return []Listener{{Name: "outbound", Address: "127.0.0.1:15001"}, {Name: "inbound", Address: "[::]:15006"},
			{Name: "odd", Address: "@abstract"}}
	}}, nil)
	check(t, do(t, h, "GET", "/listeners"), 200, "inbound::[::]:15006\nodd::@abstract\noutbound::127.0.0.1:15001\n")
	checkJSON(t, do(t, h, "GET", "/listeners?format=json"), `{"listener_statuses":[
		{"name":"inbound","local_address":{"socket_address":{"address":"::","port_value":15006}}},
		{"name":"odd","local_address":{"socket_address":{"address":"@abstract"}}},
		{"name":"outbound","local_address":{"socket_address":{"address":"127.0.0.1","port_value":15001}}}]}`)
}

func TestConfigDump(t *testing.T) {
	type cfg struct {
		Inbound uint16            `json:"inbound_port"`
		Labels  map[string]string `json:"labels"`
	}
	h := New(Sources{ConfigDump: func() any { return cfg{15006, map[string]string{"app": "reviews"}} }}, nil)
	rec := do(t, h, "GET", "/config_dump")
	check(t, rec, 200, "{\n  \"inbound_port\": 15006,\n  \"labels\": {\n    \"app\": \"reviews\"\n  }\n}\n")

	h = New(Sources{ConfigDump: func() any { return make(chan int) }}, nil)
	check(t, do(t, h, "GET", "/config_dump"), 500, "admin: encoding JSON: json: unsupported type: chan int\n")
}

func TestCerts(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	svid := CertInfoFrom(&x509.Certificate{
		SerialNumber: big.NewInt(0xbeef),
		URIs:         []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/ns/default/sa/reviews"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(36 * time.Hour),
	})
	if want := (CertInfo{SpiffeID: "spiffe://example.org/ns/default/sa/reviews", Serial: "beef",
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(36 * time.Hour)}); svid != want {
		t.Errorf("CertInfoFrom = %+v, want %+v", svid, want)
	}
	ca := CertInfo{SpiffeID: "spiffe://example.org", Serial: "1", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-30 * time.Second)}

	certs := Certs{}
	h := New(Sources{Certs: func() Certs { return certs }, Now: func() time.Time { return now }}, nil)
	checkJSON(t, do(t, h, "GET", "/certs"), `{"certificates":[]}`)

	certs = Certs{SVID: &svid, Bundle: []CertInfo{ca}}
	checkJSON(t, do(t, h, "GET", "/certs"), `{"certificates":[{
		"cert_chain":[{"serial_number":"beef","subject_alt_names":[{"uri":"spiffe://example.org/ns/default/sa/reviews"}],
			"days_until_expiration":1,"seconds_until_expiration":129600,
			"valid_from":"2026-03-01T11:00:00Z","expiration_time":"2026-03-03T00:00:00Z"}],
		"ca_cert":[{"serial_number":"1","subject_alt_names":[{"uri":"spiffe://example.org"}],
			"days_until_expiration":0,"seconds_until_expiration":-30,
			"valid_from":"2026-02-27T12:00:00Z","expiration_time":"2026-03-01T11:59:30Z"}]}]}`)

	certs = Certs{Bundle: []CertInfo{{Serial: "2", NotBefore: now, NotAfter: now.Add(72 * time.Hour)}}}
	checkJSON(t, do(t, h, "GET", "/certs"), `{"certificates":[{"cert_chain":[],"ca_cert":[{"serial_number":"2",
		"subject_alt_names":[],"days_until_expiration":3,"seconds_until_expiration":259200,
		"valid_from":"2026-03-01T12:00:00Z","expiration_time":"2026-03-04T12:00:00Z"}]}]}`)
}

func TestServerInfo(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	info := func() ServerInfo {
		return ServerInfo{Version: "v0.3.0", Started: now.Add(-90*time.Second - 500*time.Millisecond),
			CommandLineOptions: map[string]string{"inbound-port": "15006", "log-level": "info"}}
	}
	state, reason := "LIVE", error(nil)
	h := New(Sources{ServerInfo: info, Ready: func() (string, error) { return state, reason }, Now: func() time.Time { return now }}, nil)
	checkJSON(t, do(t, h, "GET", "/server_info"), `{"version":"v0.3.0","state":"LIVE","uptime_current_epoch":"90s",
		"uptime_all_epochs":"90s","command_line_options":{"inbound-port":"15006","log-level":"info"}}`)

	state, reason = "DRAINING", errors.New("quitquitquit")
	checkJSON(t, do(t, h, "GET", "/server_info"), `{"version":"v0.3.0","state":"DRAINING","uptime_current_epoch":"90s",
		"uptime_all_epochs":"90s","command_line_options":{"inbound-port":"15006","log-level":"info"}}`)

	h = New(Sources{ServerInfo: func() ServerInfo { return ServerInfo{Version: "dev", Started: now} },
		Now: func() time.Time { return now }}, nil)
	checkJSON(t, do(t, h, "GET", "/server_info"), `{"version":"dev","state":"UNKNOWN","uptime_current_epoch":"0s",
		"uptime_all_epochs":"0s","command_line_options":{}}`)
}
