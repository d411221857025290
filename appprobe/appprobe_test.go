package appprobe_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/appprobe"
)

func ptr[T any](v T) *T { return &v }

func TestPath(t *testing.T) {
	if got := appprobe.Path("app", appprobe.Readiness); got != "/app-health/app/readyz" {
		t.Errorf("Path = %q", got)
	}
	if got := appprobe.Path("db", appprobe.Startup); got != "/app-health/db/startupz" {
		t.Errorf("Path = %q", got)
	}
}

func TestParse(t *testing.T) {
	data := `{
	  "/app-health/app/readyz": {"httpGet": {"path": "/ready?full=1", "port": 8080, "scheme": "HTTPS",
	    "httpHeaders": [{"name": "Host", "value": "app.example"}, {"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
	  "/app-health/app/livez": {"tcpSocket": {"port": 8080, "host": "::1"}},
	  "/app-health/app-2/startupz": {"grpc": {"port": 9000, "service": "db"}},
	  "/app-health/app-2/livez": {"grpc": {"port": 9000}},
	  "/app-health/app-2/readyz": {"httpGet": {"port": 1, "host": "localhost", "httpHeaders": []}}
	}`
	want := appprobe.Set{
		"/app-health/app/readyz": {HTTPGet: &appprobe.HTTPGet{Path: "/ready?full=1", Port: 8080, Scheme: "HTTPS",
			HTTPHeaders: []appprobe.Header{{Name: "Host", Value: "app.example"}, {Name: "X-Probe", Value: "1"}}}, TimeoutSeconds: 3},
		"/app-health/app/livez":      {TCPSocket: &appprobe.TCPSocket{Port: 8080, Host: "::1"}},
		"/app-health/app-2/startupz": {GRPC: &appprobe.GRPC{Port: 9000, Service: ptr("db")}},
		"/app-health/app-2/livez":    {GRPC: &appprobe.GRPC{Port: 9000}},
		"/app-health/app-2/readyz":   {HTTPGet: &appprobe.HTTPGet{Port: 1, Host: "localhost"}},
	}
	got, err := appprobe.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	for _, empty := range []string{"", " \n", "{}", "null"} {
		s, err := appprobe.Parse(empty)
		if err != nil || s == nil || len(s) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want an empty, non-nil Set", empty, s, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	const key = `"/app-health/app/readyz"`
	for _, tt := range []struct{ name, data, want string }{
		{"syntax", `{bad`, "invalid character 'b' looking for beginning of object key string"},
		{"not an object", `[]`, "want a JSON object of probe paths to probes, got ["},
		{"trailing data", `{} {}`, "invalid character '{' after top-level value"},
		{"repeated path", `{"/app-health/app/readyz": {"grpc": {"port": 1}}, "/app-health/app/readyz": {"grpc": {"port": 2}}}`,
			key + ": given twice"},
		{"not a probe path", `{"/healthz": {"grpc": {"port": 1}}}`,
			`"/healthz": not a probe path: want /app-health/<container>/<readyz|livez|startupz>`},
		{"unknown kind", `{"/app-health/app/ready": {"grpc": {"port": 1}}}`,
			`"/app-health/app/ready": not a probe path: want /app-health/<container>/<readyz|livez|startupz>`},
		{"extra element", `{"/app-health/app/x/readyz": {"grpc": {"port": 1}}}`,
			`"/app-health/app/x/readyz": not a probe path: want /app-health/<container>/<readyz|livez|startupz>`},
		{"bad container", `{"/app-health/App_1/readyz": {"grpc": {"port": 1}}}`,
			`"/app-health/App_1/readyz": container "App_1": not a container name (a DNS-1123 label)`},
		{"empty container", `{"/app-health//readyz": {"grpc": {"port": 1}}}`,
			`"/app-health//readyz": container "": not a container name (a DNS-1123 label)`},
		{"unknown field", `{"/app-health/app/readyz": {"exec": {"command": ["true"]}}}`, key + `: json: unknown field "exec"`},
		{"unknown nested field", `{"/app-health/app/readyz": {"httpGet": {"port": 1, "portt": 2}}}`, key + `: json: unknown field "portt"`},
		{"port as a name", `{"/app-health/app/readyz": {"httpGet": {"port": "http"}}}`,
			key + ": json: cannot unmarshal string into Go struct field HTTPGet.httpGet.port of type int32"},
		{"no probe", `{"/app-health/app/readyz": {"timeoutSeconds": 1}}`,
			key + ": exactly one of httpGet, tcpSocket and grpc is needed, got none"},
		{"null probe", `{"/app-health/app/readyz": null}`,
			key + ": exactly one of httpGet, tcpSocket and grpc is needed, got none"},
		{"two probes", `{"/app-health/app/readyz": {"httpGet": {"port": 1}, "grpc": {"port": 1}}}`,
			key + ": exactly one of httpGet, tcpSocket and grpc is needed, got httpGet and grpc"},
		{"httpGet port 0", `{"/app-health/app/readyz": {"httpGet": {"path": "/"}}}`, key + ": httpGet.port: 0: not a port (1-65535)"},
		{"tcpSocket port", `{"/app-health/app/readyz": {"tcpSocket": {"port": 65536}}}`, key + ": tcpSocket.port: 65536: not a port (1-65535)"},
		{"grpc port", `{"/app-health/app/readyz": {"grpc": {"port": -1}}}`, key + ": grpc.port: -1: not a port (1-65535)"},
		{"scheme", `{"/app-health/app/readyz": {"httpGet": {"port": 1, "scheme": "https"}}}`, key + `: httpGet.scheme: "https": want HTTP or HTTPS`},
		{"timeout", `{"/app-health/app/readyz": {"grpc": {"port": 1}, "timeoutSeconds": -1}}`, key + ": timeoutSeconds: -1: must not be negative"},
		{"header name", `{"/app-health/app/readyz": {"httpGet": {"port": 1, "httpHeaders": [{"name": "X-Ok", "value": ""}, {"name": "X Bad", "value": "v"}]}}}`,
			key + `: httpGet.httpHeaders[1].name: "X Bad": not a header name`},
		{"header value", `{"/app-health/app/readyz": {"httpGet": {"port": 1, "httpHeaders": [{"name": "X", "value": "a\r\nEvil: 1"}]}}}`,
			key + `: httpGet.httpHeaders[0].value: "a\r\nEvil: 1": not a header value`},
		{"httpGet host", `{"/app-health/app/readyz": {"httpGet": {"port": 1, "host": "a/b"}}}`, key + `: httpGet.host: "a/b": not an IP address or DNS name`},
		{"tcpSocket host", `{"/app-health/app/readyz": {"tcpSocket": {"port": 1, "host": "fe80::1%eth0"}}}`,
			key + `: tcpSocket.host: "fe80::1%eth0": not an IP address or DNS name`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := appprobe.Parse(tt.data)
			if err == nil || err.Error() != "appprobe: "+tt.want {
				t.Errorf("Parse = %v, %v\nwant error appprobe: %s", s, err, tt.want)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	s := appprobe.Set{
		appprobe.Path("b", appprobe.Liveness):  {TCPSocket: &appprobe.TCPSocket{Port: 5432}},
		appprobe.Path("a", appprobe.Readiness): {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: 8080}, TimeoutSeconds: 2},
		appprobe.Path("a", appprobe.Startup):   {GRPC: &appprobe.GRPC{Port: 9000, Service: ptr("")}},
	}
	const want = `{"/app-health/a/readyz":{"httpGet":{"path":"/ready","port":8080},"timeoutSeconds":2},` +
		`"/app-health/a/startupz":{"grpc":{"port":9000,"service":""}},"/app-health/b/livez":{"tcpSocket":{"port":5432}}}`
	if got := s.Encode(); got != want {
		t.Errorf("Encode =\n%s\nwant\n%s", got, want)
	}
	back, err := appprobe.Parse(s.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, back); diff != "" {
		t.Errorf("Parse(Encode) (-want +got):\n%s", diff)
	}
	if got := appprobe.Set(nil).Encode(); got != "{}" {
		t.Errorf("nil Set encodes as %q, want {}", got)
	}
}

// FuzzParse: Parse never panics, and whatever it accepts comes back equal
// through Encode and Parse.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "null", "{}", "[]", `{"/app-health/a/readyz":{"httpGet":{"port":1}}}`,
		`{"/app-health/a/readyz":{"httpGet":{"path":"/x?y=<z>","port":8080,"host":"::1","scheme":"HTTPS",` +
			`"httpHeaders":[{"name":"Host","value":"h\u00e9"}]},"timeoutSeconds":3}}`,
		`{"/app-health/a/livez":{"tcpSocket":{"port":65535,"host":"a.b."}},"/app-health/b/startupz":{"grpc":{"port":1,"service":""}}}`,
		`{"/app-health/a/readyz":{"grpc":{"port":1}},"/app-health/a/readyz":{"grpc":{"port":2}}}`,
		`{"/app-health/a/readyz":{"HTTPGET":{"PORT":1,"httpHeaders":[]}}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		s, err := appprobe.Parse(data)
		if err != nil {
			return
		}
		enc := s.Encode()
		back, err := appprobe.Parse(enc)
		if err != nil {
			t.Fatalf("Parse(%q) accepted, but not its Encode %q: %v", data, enc, err)
		}
		if diff := cmp.Diff(s, back); diff != "" {
			t.Fatalf("round trip of %q (-first +second):\n%s", data, diff)
		}
		if again := back.Encode(); again != enc {
			t.Fatalf("Encode not stable: %q then %q", enc, again)
		}
	})
}
