package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// fakeUpstream records what the router sent and answers with res or err.
type fakeUpstream struct {
	status int    // answered, 0: 200
	onErr  func() // run before err is returned
	got    *http.Request
	proto  upstream.Protocol
	body   string
	wait   time.Duration // the clock advances this much while "upstream"
	clock  *fakeClock
	err    error
	// conn, when set, is the connection the request gets, as the
	// transport's trace reports it, after setup: the clock advances this
	// much first.
	conn  *httptrace.GotConnInfo
	setup time.Duration
	// complete is what the body sent said of its end, before it was read.
	complete string
}

func (u *fakeUpstream) RoundTrip(r *http.Request, _ upstream.Endpoint, p upstream.Protocol) (*http.Response, error) {
	u.got, u.proto = r, p
	if cb, ok := r.Body.(interface{ Complete() (int, bool) }); ok {
		n, done := cb.Complete()
		u.complete = fmt.Sprint(n, done)
	}
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		u.body = string(b)
	}
	if u.err != nil {
		if u.onErr != nil {
			u.onErr()
		}
		return nil, u.err
	}
	if u.conn != nil {
		u.clock.t = u.clock.t.Add(u.setup)
		if tr := httptrace.ContextClientTrace(r.Context()); tr != nil && tr.GotConn != nil {
			tr.GotConn(*u.conn)
		}
	}
	u.clock.t = u.clock.t.Add(u.wait)
	status := u.status
	if status == 0 {
		status = 200
	}
	return &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok")), Request: r}, nil
}

// app is where the test routes send requests.
var app = netip.MustParseAddrPort("127.0.0.1:8080")

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newRouter(t *testing.T, cfg Config, up *fakeUpstream) *Router {
	t.Helper()
	up.clock = &fakeClock{t: time.Unix(1000, 0)}
	rt, err := New(cfg, filters.Env{
		Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: up.clock.now, Upstream: up,
		Route: func(dst netip.AddrPort) upstream.Route {
			return upstream.Fixed{Addr: app, Meshed: netip.MustParsePrefix("10.0.0.0/8").Contains(dst.Addr())}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// serve runs one request through rt with info and returns the recorder.
func serve(rt *Router, r *http.Request, info *filters.Info) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	rt.Forward(rec, r.WithContext(filters.NewContext(r.Context(), info)))
	return rec
}

func TestProtocolChoice(t *testing.T) {
	meshed := netip.MustParseAddrPort("10.1.1.1:8080")
	outside := netip.MustParseAddrPort("192.0.2.1:8080")
	for _, tc := range []struct {
		name          string
		dir           filters.Direction
		dst           netip.AddrPort
		proto         string // of the request as received
		origProto     string // request header as received
		upgrade       string
		wantProto     upstream.Protocol
		wantOrigProto string
	}{
		{"outbound HTTP/1.1 to the mesh goes as HTTP/2, saying so", filters.Outbound, meshed, "HTTP/1.1", "", "", upstream.HTTP2, "HTTP/1.1"},
		{"outbound HTTP/1.0 to the mesh", filters.Outbound, meshed, "HTTP/1.0", "", "", upstream.HTTP2, "HTTP/1.0"},
		{"outbound h2c to the mesh", filters.Outbound, meshed, "HTTP/2.0", "", "", upstream.HTTP2, ""},
		{"outbound HTTP/1.1 outside the mesh stays HTTP/1.1", filters.Outbound, outside, "HTTP/1.1", "", "", upstream.HTTP1, ""},
		{"outbound h2c outside the mesh stays h2c", filters.Outbound, outside, "HTTP/2.0", "", "", upstream.HTTP2, ""},
		{"outbound upgrade goes HTTP/1.1 even to the mesh", filters.Outbound, meshed, "HTTP/1.1", "", "websocket", upstream.HTTP1, ""},
		{"a client's own orig-proto header outbound is dropped", filters.Outbound, outside, "HTTP/1.1", "HTTP/1.0", "", upstream.HTTP1, ""},
		{"inbound with orig-proto reaches the app as HTTP/1.1", filters.Inbound, meshed, "HTTP/2.0", "HTTP/1.1", "", upstream.HTTP1, ""},
		{"inbound h2c without it stays h2c", filters.Inbound, meshed, "HTTP/2.0", "", "", upstream.HTTP2, ""},
		{"inbound HTTP/1.1 stays HTTP/1.1", filters.Inbound, meshed, "HTTP/1.1", "", "", upstream.HTTP1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &fakeUpstream{}
			rt := newRouter(t, Config{}, up)
			r := httptest.NewRequest("GET", "http://b.shop/x", nil)
			r.Proto = tc.proto
			r.ProtoMajor, r.ProtoMinor, _ = http.ParseHTTPVersion(tc.proto)
			if tc.origProto != "" {
				r.Header.Set(OrigProtoHeader, tc.origProto)
			}
			rec := serve(rt, r, &filters.Info{Direction: tc.dir, Destination: tc.dst, Upgrade: tc.upgrade})
			if rec.Code != 200 {
				t.Fatalf("status %d", rec.Code)
			}
			if up.proto != tc.wantProto || up.got.Header.Get(OrigProtoHeader) != tc.wantOrigProto {
				t.Errorf("sent %v with %s %q, want %v with %q", up.proto, OrigProtoHeader, up.got.Header.Get(OrigProtoHeader), tc.wantProto, tc.wantOrigProto)
			}
			if tc.upgrade != "" && (up.got.Header.Get("Upgrade") != tc.upgrade || up.got.Header.Get("Connection") != "Upgrade") {
				t.Errorf("upgrade headers = %v", up.got.Header)
			}
			if up.got.URL.Host != "127.0.0.1:8080" || up.got.Host != "b.shop" {
				t.Errorf("sent to %s with Host %s, want 127.0.0.1:8080 and Host b.shop", up.got.URL.Host, up.got.Host)
			}
		})
	}
}

func TestForwardingHeaders(t *testing.T) {
	up := &fakeUpstream{}
	rt := newRouter(t, Config{}, up)
	r := httptest.NewRequest("POST", "http://b.shop/x", strings.NewReader("body"))
	r.Header.Set("X-Forwarded-For", "203.0.113.7")
	r.Header.Set("Forwarded", "for=203.0.113.7")
	r.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	info := &filters.Info{}
	info.StartAttempt() // a retry's second attempt
	serve(rt, r, info)
	h := up.got.Header
	if h.Get("X-Forwarded-For") != "203.0.113.7" || h.Get("Forwarded") != "for=203.0.113.7" {
		t.Errorf("forwarding headers changed: %v", h)
	}
	if h.Get("Traceparent") != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("traceparent changed: %q", h.Get("Traceparent"))
	}
	if h.Get(AttemptCountHeader) != "2" || up.body != "body" {
		t.Errorf("attempt %q body %q, want 2 and the body", h.Get(AttemptCountHeader), up.body)
	}
}

func TestUpstreamServiceTime(t *testing.T) {
	off := ""
	for _, tc := range []struct {
		name       string
		cfg        Config
		wantHeader map[string]string
	}{
		{"default header", Config{}, map[string]string{"X-Envoy-Upstream-Service-Time": "57", "Server-Timing": ""}},
		{"renamed, with Server-Timing", Config{UpstreamServiceTimeHeader: ptr("x-took"), ServerTiming: true},
			map[string]string{"X-Took": "57", "X-Envoy-Upstream-Service-Time": "", "Server-Timing": "upstream;dur=57.250"}},
		{"off", Config{UpstreamServiceTimeHeader: &off}, map[string]string{"X-Envoy-Upstream-Service-Time": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &fakeUpstream{wait: 57250 * time.Microsecond}
			rt := newRouter(t, tc.cfg, up)
			info := &filters.Info{}
			rec := serve(rt, httptest.NewRequest("GET", "http://b/", nil), info)
			for k, v := range tc.wantHeader {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if d, ok := info.UpstreamTime(); !ok || d != 57250*time.Microsecond {
				t.Errorf("Info upstream time = %v %v", d, ok)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestUpstreamErrors(t *testing.T) {
	refused := &upstream.Error{Kind: upstream.ConnectFailure, Endpoint: "127.0.0.1:8080", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name      string
		err       error
		ctx       func() (context.Context, context.CancelFunc)
		wantCode  int
		wantFlags string
		wantKind  upstream.Kind
		wantBody  string
	}{
		{"connect failure", refused, nil, 503, "UF", upstream.ConnectFailure, "upstream connect error: connection refused\n"},
		{"refused stream", &upstream.Error{Kind: upstream.Refused, Err: errors.New("stream error: REFUSED_STREAM")}, nil, 503, "UF", upstream.Refused, "upstream connect error: stream error: REFUSED_STREAM\n"},
		{"reset", &upstream.Error{Kind: upstream.Reset, Err: errors.New("EOF")}, nil, 503, "UC", upstream.Reset, "upstream reset before response headers: EOF\n"},
		{"protocol error", &upstream.Error{Kind: upstream.ProtocolError, Err: errors.New("malformed HTTP response \"x\\ny\"")}, nil, 502, "UPE", upstream.ProtocolError, "upstream protocol error: malformed HTTP response \"x\\ny\"\n"},
		{"deadline", context.DeadlineExceeded, func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(context.Background(), time.Unix(1, 0))
		}, 504, "UT", 0, "upstream request timeout\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &fakeUpstream{err: tc.err}
			rt := newRouter(t, Config{}, up)
			r := httptest.NewRequest("GET", "http://b/", nil)
			if tc.ctx != nil {
				ctx, cancel := tc.ctx()
				defer cancel()
				r = r.WithContext(ctx)
			}
			info := &filters.Info{}
			rec := serve(rt, r, info)
			if rec.Code != tc.wantCode || rec.Header().Get(filters.FlagsHeader) != tc.wantFlags || rec.Body.String() != tc.wantBody {
				t.Errorf("got %d %q %q, want %d %q %q", rec.Code, rec.Header().Get(filters.FlagsHeader), rec.Body.String(), tc.wantCode, tc.wantFlags, tc.wantBody)
			}
			if info.Flags().String() != tc.wantFlags || info.UpstreamFailure() != tc.wantKind {
				t.Errorf("info flags %s kind %v, want %s %v", info.Flags(), info.UpstreamFailure(), tc.wantFlags, tc.wantKind)
			}
		})
	}
}

func TestClientGoneAbortsWithoutAResponse(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rt := newRouter(t, Config{}, &fakeUpstream{err: context.Canceled})
	info := &filters.Info{}
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Errorf("recovered %v, want http.ErrAbortHandler", p)
		}
		if info.Flags() != filters.DownstreamDisconnect {
			t.Errorf("flags = %s, want DC", info.Flags())
		}
	}()
	serve(rt, httptest.NewRequest("GET", "http://b/", nil).WithContext(ctx), info)
}

func TestConfigValidation(t *testing.T) {
	_, err := (&Config{UpstreamServiceTimeHeader: ptr("no spaces")}).Build(filters.Env{Log: zap.NewNop(), Upstream: &fakeUpstream{}})
	if want := `upstreamServiceTimeHeader: "no spaces" is not a valid header name`; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

func TestInboundKeepsThePeersAttemptCount(t *testing.T) {
	for _, tc := range []struct {
		dir      filters.Direction
		sent     string
		attempts int
		want     string
	}{
		{filters.Outbound, "7", 1, "1"},
		{filters.Inbound, "3", 1, "3"},
		{filters.Inbound, "", 1, "1"},
		{filters.Inbound, "3", 2, "2"}, // the inbound sidecar retries
	} {
		up := &fakeUpstream{}
		rt := newRouter(t, Config{}, up)
		r := httptest.NewRequest("GET", "http://b/", nil)
		if tc.sent != "" {
			r.Header.Set(AttemptCountHeader, tc.sent)
		}
		info := &filters.Info{Direction: tc.dir}
		for range tc.attempts - 1 {
			info.StartAttempt()
		}
		serve(rt, r, info)
		if got := up.got.Header.Get(AttemptCountHeader); got != tc.want {
			t.Errorf("%v, received %q, attempt %d: sent %q, want %q", tc.dir, tc.sent, tc.attempts, got, tc.want)
		}
	}
}

func TestQueryForwardedAsItCame(t *testing.T) {
	for _, q := range []string{"z=1&a=2;x", "sig=abc&a=%zz", "b=2&a=1", "a=1&&a=2"} {
		up := &fakeUpstream{}
		rt := newRouter(t, Config{}, up)
		serve(rt, httptest.NewRequest("GET", "http://b/s?"+q, nil), &filters.Info{})
		if up.got.URL.RawQuery != q {
			t.Errorf("query %q forwarded as %q", q, up.got.URL.RawQuery)
		}
	}
}

// completeBody has all arrived, as proxy/h2's server says of a body.
type completeBody struct{ *strings.Reader }

func (b completeBody) Close() error          { return nil }
func (b completeBody) Complete() (int, bool) { return b.Len(), true }

// A body that has all arrived says so to the transport, so that it goes
// with the request's head (ReverseProxy's wrapper of the body hid it).
func TestCompleteBodyReachesTheTransport(t *testing.T) {
	up := &fakeUpstream{}
	rt := newRouter(t, Config{}, up)
	r := httptest.NewRequest("POST", "http://b/s", nil)
	r.Body, r.ContentLength = completeBody{strings.NewReader("held")}, 4
	serve(rt, r, &filters.Info{})
	if up.complete != "4 true" || up.body != "held" {
		t.Errorf("transport saw Complete() = %q and body %q, want 4 true and held", up.complete, up.body)
	}
}

// brokenBody fails after its first bytes, as an upstream that resets.
type brokenBody struct{ sent bool }

func (b *brokenBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "partial"), nil
	}
	return 0, syscall.ECONNRESET
}
func (b *brokenBody) Close() error { return nil }

type brokenUpstream struct{}

func (brokenUpstream) RoundTrip(r *http.Request, _ upstream.Endpoint, _ upstream.Protocol) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: &brokenBody{}, Request: r}, nil
}

func TestResponseCutOffIsFlagged(t *testing.T) {
	rt, err := New(Config{}, filters.Env{Log: zap.NewNop(), Now: time.Now, Upstream: brokenUpstream{}, Route: func(netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: app} }})
	if err != nil {
		t.Fatal(err)
	}
	info := &filters.Info{}
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Errorf("recovered %v, want http.ErrAbortHandler (the stream must be reset)", p)
		}
		if info.Flags() != filters.UpstreamReset {
			t.Errorf("flags = %s, want UC", info.Flags())
		}
	}()
	// Under any server: ReverseProxy ended such a response as if whole
	// when its context had no http.ServerContextKey, as under proxy/h2.
	serve(rt, httptest.NewRequest("GET", "http://b/", nil), info)
}

// recordingRoute picks ep and records each outcome reported.
type recordingRoute struct {
	ep      upstream.Endpoint
	err     error
	reports []string
}

func (r *recordingRoute) Pick() (upstream.Endpoint, upstream.Done, error) {
	if r.err != nil {
		return upstream.Endpoint{}, nil, r.err
	}
	return r.ep, func(latency time.Duration, failed bool) {
		r.reports = append(r.reports, fmt.Sprintf("%v failed=%v", latency, failed))
	}, nil
}

// TestEachAttemptPicksAndReports: the router picks the endpoint from the
// destination's route, sends the request there (meshed: HTTP/2), records
// it in Info, and reports the outcome back to the route once.
func TestEachAttemptPicksAndReports(t *testing.T) {
	ep := upstream.Endpoint{Addr: netip.MustParseAddrPort("10.1.2.3:8080"), Meshed: true,
		Identity: "spiffe://cluster.local/ns/shop/sa/web", Service: upstream.Service{Namespace: "shop", Name: "web"}}
	reused, fresh := &httptrace.GotConnInfo{Reused: true}, &httptrace.GotConnInfo{}
	for _, tc := range []struct {
		name   string
		err    error
		status int
		conn   *httptrace.GotConnInfo
		want   string
	}{
		{"answered", nil, 200, nil, "25ms failed=false"},
		{"5xx", nil, 503, nil, "25ms failed=true"},
		{"connect failure", &upstream.Error{Kind: upstream.ConnectFailure, Err: errors.New("refused")}, 0, nil, "25ms failed=true"},
		{"answered on a connection used before: from the connection on", nil, 200, reused, "25ms failed=false"},
		{"answered first on a new connection: no latency", nil, 200, fresh, "-1ns failed=false"},
		{"5xx first on a new connection: a failure, from the connection on", nil, 503, fresh, "25ms failed=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			route := &recordingRoute{ep: ep}
			up := &fakeUpstream{err: tc.err, wait: 25 * time.Millisecond, status: tc.status, conn: tc.conn, setup: 40 * time.Millisecond}
			up.clock = &fakeClock{t: time.Unix(1000, 0)}
			rt, err := New(Config{}, filters.Env{Log: zap.NewNop(), Now: up.clock.now, Upstream: up,
				Route: func(netip.AddrPort) upstream.Route { return route }})
			if err != nil {
				t.Fatal(err)
			}
			if tc.err != nil {
				up.onErr = func() { up.clock.t = up.clock.t.Add(up.wait) }
			}
			info := &filters.Info{Direction: filters.Outbound, Destination: netip.MustParseAddrPort("198.19.0.10:80")}
			serve(rt, httptest.NewRequest("GET", "http://web/", nil), info)
			if diff := cmp.Diff([]string{tc.want}, route.reports); diff != "" {
				t.Errorf("reports (-want +got):\n%s", diff)
			}
			if up.got == nil || up.got.URL.Host != "10.1.2.3:8080" || up.proto != upstream.HTTP2 {
				t.Errorf("sent to %v over %v, want 10.1.2.3:8080 over HTTP/2", up.got, up.proto)
			}
			if info.Endpoint() != ep {
				t.Errorf("info endpoint = %+v, want %+v", info.Endpoint(), ep)
			}
		})
	}
}

// TestNoHealthyUpstream: a route with nothing to pick answers 503 UH with
// the reason, and nothing is sent.
func TestNoHealthyUpstream(t *testing.T) {
	route := &recordingRoute{err: fmt.Errorf("balance: no ready endpoints: %w", upstream.ErrNoHealthyUpstream)}
	up := &fakeUpstream{clock: &fakeClock{}}
	rt, err := New(Config{}, filters.Env{Log: zap.NewNop(), Now: time.Now, Upstream: up,
		Route: func(netip.AddrPort) upstream.Route { return route }})
	if err != nil {
		t.Fatal(err)
	}
	info := &filters.Info{Direction: filters.Outbound}
	rec := serve(rt, httptest.NewRequest("GET", "http://web/", nil), info)
	if rec.Code != 503 || rec.Header().Get(filters.FlagsHeader) != "UH" ||
		rec.Body.String() != "balance: no ready endpoints: no healthy upstream\n" || info.Attempts() != 1 {
		t.Errorf("got %d %q %q (attempts %d), want 503 UH with the reason", rec.Code, rec.Header().Get(filters.FlagsHeader), rec.Body.String(), info.Attempts())
	}
	if up.got != nil {
		t.Errorf("a request was sent with no endpoint picked")
	}
}

// TestPeerHeaders: outbound to a meshed endpoint, the router tells the
// peer sidecar the Service it picked the endpoint for and its own
// workload; to any other endpoint, and inbound, neither, and what the
// request carried of them is dropped.
func TestPeerHeaders(t *testing.T) {
	const self = "fe;fe-app;v1;Kubernetes"
	svc := upstream.Service{Namespace: "shop", Name: "cart"}
	for _, tc := range []struct {
		name   string
		dir    filters.Direction
		meshed bool
		want   bool
	}{
		{"outbound to a meshed endpoint", filters.Outbound, true, true},
		{"outbound to a plain endpoint", filters.Outbound, false, false},
		{"inbound", filters.Inbound, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &fakeUpstream{clock: &fakeClock{t: time.Unix(1000, 0)}}
			rt, err := New(Config{}, filters.Env{Log: zap.NewNop(), Now: up.clock.now, Upstream: up, Workload: self,
				Route: func(netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: app, Meshed: tc.meshed, Service: svc} }})
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("GET", "http://cart.shop/", nil)
			r.Header.Set(WorkloadHeader, "forged;x;y;z")
			r.Header.Set(ServiceHeader, "forged.x")
			serve(rt, r, &filters.Info{Direction: tc.dir})
			gotW, gotS := up.got.Header.Get(WorkloadHeader), up.got.Header.Get(ServiceHeader)
			if tc.want && (gotW != self || gotS != "cart.shop") || !tc.want && (gotW != "" || gotS != "") {
				t.Errorf("sent %s %q and %s %q (want them: %v)", WorkloadHeader, gotW, ServiceHeader, gotS, tc.want)
			}
		})
	}
}
