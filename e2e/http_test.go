package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// httpMesh is two pods with sidecars that know each other as meshed, with
// identities from the node's `pillion identity`: a is the client, b serves
// HTTP/1.1 and h2c on 8080 (see serveApp).
type httpMesh struct {
	node      *testpod.Node
	a, b      *meshtest.Sidecar
	issuer    *meshtest.Issuer // nil when the identities come from elsewhere
	configA   string           // a's config file, rewritable
	configB   string
	bAddr     string // b's 8080 by IPv4
	bAddr6    string // by IPv6
	bIP, bIP6 string
}

const meshConfig = "mesh: {networks: " + meshtest.MeshNetworks + "}\n"

// newHTTPMesh makes an httpMesh whose sidecars run with configA and
// configB, each after the mesh section meshConfig unless it has its own.
func newHTTPMesh(t *testing.T, configA, configB string) *httpMesh {
	t.Helper()
	return newHTTPMeshTTL(t, time.Hour, 0, configA, configB)
}

// newHTTPMeshTTL is newHTTPMesh with SVIDs that live ttl and a CA that
// lives caTTL (zero: the issuer's default).
func newHTTPMeshTTL(t *testing.T, ttl, caTTL time.Duration, configA, configB string) *httpMesh {
	t.Helper()
	var iss *meshtest.Issuer
	m := newHTTPMeshWith(t, func(a, b *testpod.Pod) ([]string, []string) {
		iss = meshtest.StartRotatingIssuer(t, pillionBin, ttl, caTTL, a, b)
		return []string{iss.ProxyArg(a)}, []string{iss.ProxyArg(b)}
	}, configA, configB)
	m.issuer = iss
	return m
}

// newHTTPMeshWith is newHTTPMesh with identities from identify, which
// starts an identity source for pods a and b and returns the proxy flags
// that take each pod's identity from it.
func newHTTPMeshWith(t *testing.T, identify func(a, b *testpod.Pod) (flagsA, flagsB []string), configA, configB string) *httpMesh {
	t.Helper()
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv", "curl")
	node := testpod.NewNode(t)
	podA, podB := node.AddPod(t, "a"), node.AddPod(t, "b")
	serveApp(t, podB, ":8080")
	withMesh := func(config string) string {
		if strings.HasPrefix(config, "mesh:") {
			return config
		}
		return meshConfig + config
	}
	m := &httpMesh{
		node:    node,
		configA: meshtest.WriteConfig(t, withMesh(configA)),
		configB: meshtest.WriteConfig(t, withMesh(configB)),
		bAddr:   hostPort(podB.IPv4, 8080),
		bAddr6:  hostPort(podB.IPv6, 8080),
		bIP:     podB.IPv4.String(),
		bIP6:    podB.IPv6.String(),
	}
	flagsA, flagsB := identify(podA, podB)
	m.a = meshtest.Inject(t, pillionBin, podA, nil, append([]string{"--config=" + m.configA}, flagsA...))
	m.b = meshtest.Inject(t, pillionBin, podB, nil, append([]string{"--config=" + m.configB}, flagsB...))
	return m
}

// appSaw is what serveApp's /echo answers: the request as the app saw it.
type appSaw struct {
	Method, Proto, Host, URI string
	Header                   http.Header
	Remote                   string
}

// bodySaw is what /body answers: the request body as the app received it.
type bodySaw struct {
	Bytes            int64
	SHA256           string // hex
	ContentLength    int64
	TransferEncoding []string
	Trailer          http.Header
}

// serveApp serves HTTP/1.x and h2c on addr in pod:
//
//	/echo           the request as JSON (appSaw)
//	/sleep?ms=N     waits N ms, then 204
//	/body           reads the body, answers bodySaw as JSON and repeats the
//	                body's sha256 in the response trailer X-Body-Sha256
//	/chunks?n=N     N times chunkText(i), each flushed, no Content-Length
//	/fixed          "hello" with a Content-Length
//	/status?code=N  status N with an ETag and no body (204, 304…)
//	/hop            200 with hop-by-hop response headers: Connection names
//	                X-Hop, which is set, and Keep-Alive
//	/sse            text/event-stream: event "one", flushed, then 500 ms
//	                later event "two"
//	/ws             WebSocket: first the handshake request as JSON
//	                (appSaw), then every message echoed back
func serveApp(t *testing.T, pod *testpod.Pod, addr string) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(sawRequest(r))
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		var ms int
		fmt.Sscan(r.URL.Query().Get("ms"), &ms)
		time.Sleep(time.Duration(ms) * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/body", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := hex.EncodeToString(h.Sum(nil))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Trailer", "X-Body-Sha256")
		_ = json.NewEncoder(w).Encode(bodySaw{n, sum, r.ContentLength, r.TransferEncoding, r.Trailer})
		w.Header().Set("X-Body-Sha256", sum)
	})
	mux.HandleFunc("/chunks", func(w http.ResponseWriter, r *http.Request) {
		var n int
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		for i := range n {
			io.WriteString(w, chunkText(i))
			_ = http.NewResponseController(w).Flush()
		}
	})
	mux.HandleFunc("/fixed", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscan(r.URL.Query().Get("code"), &code)
		w.Header().Set("ETag", `"v1"`)
		w.WriteHeader(code)
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "for the next hop only")
		w.Header().Set("Keep-Alive", "timeout=9")
		io.WriteString(w, "hop")
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-time.After(500 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	})
	mux.Handle("/ws", websocket.Handler(func(ws *websocket.Conn) {
		if websocket.JSON.Send(ws, sawRequest(ws.Request())) != nil {
			return
		}
		for {
			var msg []byte
			if websocket.Message.Receive(ws, &msg) != nil || websocket.Message.Send(ws, msg) != nil {
				return
			}
		}
	}))
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protos}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
}

func sawRequest(r *http.Request) appSaw {
	return appSaw{r.Method, r.Proto, r.Host, r.RequestURI, r.Header, r.RemoteAddr}
}

// chunkText is the i-th chunk /chunks writes.
func chunkText(i int) string { return fmt.Sprintf("chunk %03d %s\n", i, strings.Repeat("x", 100*i)) }

// curl runs curl in pod with args and returns its stdout; -sS and a
// time-out are added.
func curl(t *testing.T, pod *testpod.Pod, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := pod.Command(ctx, testpod.Root, "curl", append([]string{"-sS", "--max-time", "30"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sidecarConns counts the TCP connections established over IPv4 from a's
// sidecar to b's inbound port, as b's network namespace sees them. (The
// pools are per endpoint: b's IPv6 address has its own connection.)
func sidecarConns(t *testing.T, b *testpod.Pod) int {
	t.Helper()
	out, err := b.Exec(context.Background(), "ss", "-Htn4", "state", "established", "( sport = :15006 )")
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Fields(strings.TrimSpace(out))) / 4 // ss -H prints 4 columns per line in a state filter
}

func TestHTTPAcrossTheMesh(t *testing.T) {
	m := newHTTPMesh(t, "", "")

	for _, tc := range []struct {
		name, flag, wantProto string
	}{
		{"HTTP/1.0", "--http1.0", "HTTP/1.1"},
		{"HTTP/1.1", "--http1.1", "HTTP/1.1"},
		{"h2c", "--http2-prior-knowledge", "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, addr := range []string{m.bAddr, m.bAddr6} {
				out := curl(t, m.a.Pod, tc.flag, "-H", "Host: b.shop:8080", "-D", "-", "http://"+addr+"/echo?x=1")
				head, body, _ := strings.Cut(out, "\r\n\r\n")
				var saw appSaw
				if err := json.Unmarshal([]byte(body), &saw); err != nil {
					t.Fatalf("%s: body %q: %v", addr, body, err)
				}
				if saw.Proto != tc.wantProto || saw.Host != "b.shop:8080" || saw.URI != "/echo?x=1" {
					t.Errorf("%s: app saw %s %s %s, want %s, Host b.shop:8080, /echo?x=1", addr, saw.Proto, saw.Host, saw.URI, tc.wantProto)
				}
				if h := saw.Header.Get("Pillion-Orig-Proto"); h != "" {
					t.Errorf("%s: app saw the sidecars' pillion-orig-proto header (%q)", addr, h)
				}
				if !strings.Contains(strings.ToLower(head), "x-envoy-upstream-service-time: ") {
					t.Errorf("%s: response head has no upstream service time:\n%s", addr, head)
				}
			}
		})
	}

	t.Run("N client connections share pooled HTTP/2 between the sidecars", func(t *testing.T) {
		const clients = 20
		errs := make(chan error, clients)
		for range clients {
			go func() {
				_, err := m.a.Pod.Exec(context.Background(), "curl", "-sS", "--max-time", "30", "--http1.1", "-o", "/dev/null", "http://"+m.bAddr+"/sleep?ms=200")
				errs <- err
			}()
		}
		for range clients {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if n := sidecarConns(t, m.b.Pod); n != 1 {
			t.Errorf("established connections into b's sidecar = %d after %d concurrent clients, want 1 pooled HTTP/2 connection", n, clients)
		}
	})

	t.Run("upstream service time covers the app", func(t *testing.T) {
		out := curl(t, m.a.Pod, "-o", "/dev/null", "-D", "-", "http://"+m.bAddr+"/sleep?ms=50")
		var ms int
		for line := range strings.SplitSeq(out, "\r\n") {
			if k, v, ok := strings.Cut(line, ": "); ok && strings.EqualFold(k, "x-envoy-upstream-service-time") {
				fmt.Sscan(v, &ms)
			}
		}
		if ms < 50 || ms > 5000 {
			t.Errorf("x-envoy-upstream-service-time = %d, want ≥ 50 (the app sleeps 50 ms):\n%s", ms, out)
		}
	})
}
