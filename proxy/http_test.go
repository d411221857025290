package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// httpBackend answers every request with "<method> <uri> host=<host>
// proto=<proto>" and echoes the request header X-Echo, over HTTP/1.1 and
// h2c.
func httpBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo", r.Header.Get("X-Echo"))
		w.Header().Set("X-Saw-Connection-Header", r.Header.Get("X-Hop"))
		w.Header().Set("X-Saw-Attempt", r.Header.Get("Pillion-Attempt-Count"))
		w.Header().Set("X-Saw-Pillion-Secret", r.Header.Get("Pillion-Secret"))
		fmt.Fprintf(w, "%s %s host=%s proto=%s", r.Method, r.RequestURI, r.Host, r.Proto)
	})}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// h2cClient speaks HTTP/2 with prior knowledge to whatever addr it is given.
func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func get(t *testing.T, c *http.Client, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "b.example:8080"
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

func TestH2CServedAndForwardedAsHTTP2(t *testing.T) {
	s := testServer(t, DefaultConfig(), fixed(httpBackend(t)))
	res, body := get(t, h2cClient(), fmt.Sprintf("http://127.0.0.1:%d/x", s.cfg.OutboundPort), nil)
	if res.ProtoMajor != 2 || body != "GET /x host=b.example:8080 proto=HTTP/2.0" {
		t.Errorf("got %s %q; want HTTP/2 both hops, Host kept", res.Proto, body)
	}
	if n := s.Stats().Dir[Outbound].Requests.Load(); n != 1 {
		t.Errorf("requests = %d, want 1", n)
	}
}

func TestHopByHopHeadersStripped(t *testing.T) {
	s := testServer(t, DefaultConfig(), fixed(httpBackend(t)))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, _ := get(t, c, fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort),
		http.Header{"Connection": {"X-Hop"}, "X-Hop": {"secret"}, "X-Echo": {"kept"}})
	if got := res.Header.Get("X-Saw-Connection-Header"); got != "" {
		t.Errorf("backend saw X-Hop = %q; a header named by Connection must not be forwarded", got)
	}
	if got := res.Header.Get("X-Echo"); got != "kept" {
		t.Errorf("X-Echo = %q, want it forwarded", got)
	}
}

// TestInternalHeadersNotTrusted: pillion- headers from a caller that is
// not a peer sidecar (a plaintext inbound client; outbound, the
// application) are dropped: a forged pillion-orig-proto does not turn an
// h2c request into HTTP/1.1 to the application, a forged attempt count is
// replaced, the rest never reach the application.
func TestInternalHeadersNotTrusted(t *testing.T) {
	s := testServer(t, DefaultConfig(), fixed(httpBackend(t)))
	forged := http.Header{"Pillion-Orig-Proto": {"HTTP/1.1"}, "Pillion-Attempt-Count": {"7"}, "Pillion-Secret": {"x"}}
	for _, port := range []uint16{s.cfg.InboundPort, s.cfg.OutboundPort} {
		res, body := get(t, h2cClient(), fmt.Sprintf("http://127.0.0.1:%d/x", port), forged)
		if body != "GET /x host=b.example:8080 proto=HTTP/2.0" || res.Header.Get("X-Saw-Attempt") != "1" ||
			res.Header.Get("X-Saw-Pillion-Secret") != "" {
			t.Errorf("port %d: the application got %q, attempt %q, pillion-secret %q; want HTTP/2, attempt 1, no secret",
				port, body, res.Header.Get("X-Saw-Attempt"), res.Header.Get("X-Saw-Pillion-Secret"))
		}
	}
}

func TestUpstreamDownIs503WithFlag(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	s := testServer(t, DefaultConfig(), fixed(dead))
	res, body := get(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort), nil)
	if res.StatusCode != 503 || res.Header.Get(filters.FlagsHeader) != "UF" {
		t.Errorf("got %d flags %q, want 503 UF", res.StatusCode, res.Header.Get(filters.FlagsHeader))
	}
	if !strings.HasPrefix(body, "upstream connect error: ") || !strings.Contains(body, "connection refused") {
		t.Errorf("body = %q, want the connect error", body)
	}
}

// TestApplySwapsChains checks that a new config reaches new requests and a
// config that fails to build changes nothing.
func TestApplySwapsChains(t *testing.T) {
	s := testServer(t, DefaultConfig(), fixed(httpBackend(t)))
	url := fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort)
	parse := func(y string) *configfile.File {
		f, err := configfile.Parse([]byte(y), builtin.Registry())
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if err := s.Apply(parse("outbound: {filters: [{router: {upstreamServiceTimeHeader: x-took}}]}")); err != nil {
		t.Fatal(err)
	}
	res, _ := get(t, http.DefaultClient, url, nil)
	if res.Header.Get("X-Took") == "" || res.Header.Get("X-Envoy-Upstream-Service-Time") != "" {
		t.Fatalf("after apply: headers %v, want x-took only", res.Header)
	}
	err := s.Apply(parse(`outbound: {filters: [{router: {upstreamServiceTimeHeader: "bad header"}}]}`))
	want := `outbound.filters[0].router.upstreamServiceTimeHeader: "bad header" is not a valid header name`
	if err == nil || err.Error() != want {
		t.Fatalf("bad apply: %v, want %s", err, want)
	}
	res, _ = get(t, http.DefaultClient, url, nil)
	if res.Header.Get("X-Took") == "" {
		t.Errorf("after a refused apply: headers %v, want the old config still serving", res.Header)
	}
}

func TestUpstreamServiceTimeCoversTheUpstream(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	s := testServer(t, DefaultConfig(), fixed(l.Addr().(*net.TCPAddr).AddrPort()))
	res, _ := get(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort), nil)
	var ms int
	if _, err := fmt.Sscan(res.Header.Get("X-Envoy-Upstream-Service-Time"), &ms); err != nil || ms < 50 || ms > 5000 {
		t.Errorf("x-envoy-upstream-service-time = %q, want ≥ 50 (the backend sleeps 50 ms)", res.Header.Get("X-Envoy-Upstream-Service-Time"))
	}
}

// TestInboundHTTPPoolApart: HTTP to the application goes from 127.0.0.6
// to the original destination, on pooled connections of its own. When the
// application calls its own pod IP, that address is also an outbound
// destination (here, without capture, reached from the host's address):
// neither direction's requests may ride the other's pooled connections.
func TestInboundHTTPPoolApart(t *testing.T) {
	hostIP := nonLoopbackIPv4(t)
	l, err := net.Listen("tcp", netip.AddrPortFrom(hostIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		_, _ = io.WriteString(w, ap.Addr().String())
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	app := l.Addr().(*net.TCPAddr).AddrPort()

	s := testServer(t, DefaultConfig(), fixed(app))
	for i, step := range []struct {
		port uint16
		want string
	}{
		{s.cfg.OutboundPort, hostIP.String()},
		{s.cfg.InboundPort, "127.0.0.6"},
		{s.cfg.OutboundPort, hostIP.String()},
		{s.cfg.InboundPort, "127.0.0.6"},
	} {
		res, body := get(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", step.port), nil)
		if res.StatusCode != http.StatusOK || body != step.want {
			t.Errorf("request %d: %d, the app saw %q; want 200 from %s", i, res.StatusCode, body, step.want)
		}
	}
	// Both directions' connections show under the one address.
	var total int
	for _, e := range s.PoolConns() {
		if e.Endpoint == app.String() {
			total += e.Total
		}
	}
	if total != 2 {
		t.Errorf("%s: %d pooled connections made in all, want 2 (one per direction): %+v", app, total, s.PoolConns())
	}
}
