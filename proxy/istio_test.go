package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpcx": false, "application/json": false, "": false,
	} {
		if got := isGRPC(ct); got != want {
			t.Errorf("isGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

// TestGRPCStatus: from a trailer as the router sets it (announced, or
// with http.TrailerPrefix), or the header of a trailers-only response.
func TestGRPCStatus(t *testing.T) {
	for _, tt := range []struct {
		h    http.Header
		want string
	}{
		{http.Header{"Grpc-Status": {"0"}}, "0"},
		{http.Header{http.TrailerPrefix + "Grpc-Status": {"13"}}, "13"},
		{http.Header{"Content-Type": {"application/grpc"}}, ""},
	} {
		if got := grpcStatus(tt.h); got != tt.want {
			t.Errorf("grpcStatus(%v) = %q, want %q", tt.h, got, tt.want)
		}
	}
}

// TestCountedBody counts what was read and passes on Complete.
func TestCountedBody(t *testing.T) {
	b := &countedBody{ReadCloser: io.NopCloser(strings.NewReader("hello, world"))}
	if _, err := io.Copy(io.Discard, b); err != nil {
		t.Fatal(err)
	}
	if n := b.n.Load(); n != 12 {
		t.Errorf("counted %d bytes, want 12", n)
	}
	if _, ok := b.Complete(); ok {
		t.Errorf("Complete: true for a body that cannot tell")
	}
	c := &countedBody{ReadCloser: complete{io.NopCloser(strings.NewReader("ab"))}}
	if n, ok := c.Complete(); !ok || n != 2 {
		t.Errorf("Complete = %d, %v; want 2, true", n, ok)
	}
}

type complete struct{ io.ReadCloser }

func (complete) Complete() (int, bool) { return 2, true }

// TestTakeService: the peer's pillion-service header is removed and read
// when it names a Service as name.namespace.
func TestTakeService(t *testing.T) {
	for v, want := range map[string]upstream.Service{
		"web.shop":        {Namespace: "shop", Name: "web"},
		"web":             {},
		"Web.shop":        {},
		"web.shop.svc":    {},
		"-web.shop":       {},
		"web.198.18.0.1:": {},
	} {
		h := http.Header{"Pillion-Service": {v}, "Accept": {"*/*"}}
		if got := takeService(h); got != want {
			t.Errorf("takeService(%q) = %+v, want %+v", v, got, want)
		}
		if _, ok := h["Pillion-Service"]; ok || h.Get("Accept") == "" {
			t.Errorf("%q: header after: %v, want pillion-service alone removed", v, h)
		}
	}
}

// TestIstioSwitch: requests are recorded in istio_requests_total; a config
// with metrics.istio false, applied while serving, drops the family and
// records no more; the default config turns it on again.
func TestIstioSwitch(t *testing.T) {
	s, reg := metricsServer(t, DefaultConfig(), fixed(httpBackend(t)))
	url := fmt.Sprintf("http://127.0.0.1:%d/", s.cfg.OutboundPort)
	apply := func(y string) {
		t.Helper()
		f, err := configfile.Parse([]byte(y), builtin.Registry())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(f); err != nil {
			t.Fatal(err)
		}
	}
	requests := func() float64 {
		var n float64
		for _, v := range series(t, reg, "istio_requests_total") {
			n += v
		}
		return n
	}
	send := func() {
		t.Helper()
		if res, body := get(t, http.DefaultClient, url, nil); res.StatusCode != 200 {
			t.Fatalf("got %d %q, want 200", res.StatusCode, body)
		}
	}
	send()
	waitFor(t, "1 request in istio_requests_total", func() bool { return requests() == 1 })
	apply("metrics: {istio: false}")
	send()
	waitFor(t, "the request recorded by pillion's metrics", func() bool {
		return series(t, reg, "pillion_request_duration_seconds")[`{direction="outbound"}`] == 2
	})
	if n := len(series(t, reg, "istio_requests_total")); n != 0 {
		t.Errorf("metrics.istio false: %d istio_requests_total series, want none", n)
	}
	apply("")
	send()
	waitFor(t, "1 request in istio_requests_total again", func() bool { return requests() == 1 })
}
