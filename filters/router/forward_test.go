package router

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// upstreamFunc answers each request with the function.
type upstreamFunc func(r *http.Request) (*http.Response, error)

func (f upstreamFunc) RoundTrip(r *http.Request, _ upstream.Endpoint, _ upstream.Protocol) (*http.Response, error) {
	return f(r)
}

// forwardVia runs r through a router whose upstream is f, into w.
func forwardVia(t *testing.T, f upstreamFunc, w http.ResponseWriter, r *http.Request) {
	t.Helper()
	rt, err := New(Config{UpstreamServiceTimeHeader: ptr("")}, filters.Env{
		Log: zap.NewNop(), Now: time.Now, Upstream: f,
		Route: func(netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: app} },
	})
	if err != nil {
		t.Fatal(err)
	}
	rt.Forward(w, r.WithContext(filters.NewContext(r.Context(), &filters.Info{})))
}

// headerLog is a ResponseWriter that records each status written with the
// header it was written with, and counts flushes.
type headerLog struct {
	*httptest.ResponseRecorder
	written []string // "<code> <header>"
	flushes int
}

func newHeaderLog() *headerLog { return &headerLog{ResponseRecorder: httptest.NewRecorder()} }

func (l *headerLog) WriteHeader(code int) {
	var b strings.Builder
	_ = l.Header().Write(&b)
	l.written = append(l.written, strings.TrimSpace(http.StatusText(code)+" "+strings.ReplaceAll(b.String(), "\r\n", "; ")))
	if code >= 200 { // the recorder takes any status for the final one
		l.ResponseRecorder.WriteHeader(code)
	}
}

func (l *headerLog) Flush() { l.flushes++; l.ResponseRecorder.Flush() }

// respond returns a response to r with status, header and body.
func respond(r *http.Request, status int, h http.Header, body io.Reader, length int64) *http.Response {
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(body), ContentLength: length, Request: r}
}

// TestInformationalResponsesPassedOn: a 103 the upstream sends before its
// answer reaches the client with its own header, which does not leak into
// the final response; one reported after the final response is dropped.
func TestInformationalResponsesPassedOn(t *testing.T) {
	var late func(int, map[string][]string) error
	w := newHeaderLog()
	forwardVia(t, func(r *http.Request) (*http.Response, error) {
		tr := httptrace.ContextClientTrace(r.Context())
		if err := tr.Got1xxResponse(103, map[string][]string{"Link": {"</a.css>; rel=preload"}}); err != nil {
			t.Errorf("Got1xxResponse: %v", err)
		}
		late = func(code int, h map[string][]string) error { return tr.Got1xxResponse(code, h) }
		return respond(r, 200, http.Header{"X-Final": {"yes"}}, strings.NewReader("ok"), 2), nil
	}, w, httptest.NewRequest("GET", "http://b/", nil))
	if err := late(100, map[string][]string{"X-Late": {"1"}}); err != nil {
		t.Errorf("late Got1xxResponse: %v", err)
	}
	want := []string{"Early Hints Link: </a.css>; rel=preload;", "OK X-Final: yes;"}
	if diff := cmp.Diff(want, w.written); diff != "" {
		t.Errorf("statuses written (-want +got):\n%s", diff)
	}
}

// TestResponseHopByHopRemoved: the upstream's connection headers, and
// those its Connection header names, stay on its hop.
func TestResponseHopByHopRemoved(t *testing.T) {
	w := newHeaderLog()
	forwardVia(t, func(r *http.Request) (*http.Response, error) {
		h := http.Header{
			"Connection": {"close, X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"timeout=5"},
			"Transfer-Encoding": {"chunked"}, "Upgrade": {"h2c"}, "X-Kept": {"2"},
		}
		return respond(r, 200, h, strings.NewReader("ok"), 2), nil
	}, w, httptest.NewRequest("GET", "http://b/", nil))
	if diff := cmp.Diff([]string{"OK X-Kept: 2;"}, w.written); diff != "" {
		t.Errorf("response header (-want +got):\n%s", diff)
	}
}

// chunks is a body read in the pieces given.
type chunks []string

func (c *chunks) Read(p []byte) (int, error) {
	if len(*c) == 0 {
		return 0, io.EOF
	}
	n := copy(p, (*c)[0])
	*c = (*c)[1:]
	return n, nil
}

// TestStreamingResponsesFlushed: a response of unknown length, or of
// server-sent events, reaches the client piece by piece; one of known
// length is left to the server to write out.
func TestStreamingResponsesFlushed(t *testing.T) {
	for _, tc := range []struct {
		name        string
		contentType string
		length      int64
		flushes     int
	}{
		{"unknown length", "text/plain", -1, 3},
		{"events", "text/event-stream; charset=utf-8", 9, 3},
		{"known length", "text/plain", 9, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newHeaderLog()
			forwardVia(t, func(r *http.Request) (*http.Response, error) {
				body := chunks{"one", "two", "333"}
				return respond(r, 200, http.Header{"Content-Type": {tc.contentType}}, &body, tc.length), nil
			}, w, httptest.NewRequest("GET", "http://b/", nil))
			if w.flushes != tc.flushes || w.Body.String() != "onetwo333" {
				t.Errorf("%d flushes, body %q; want %d, %q", w.flushes, w.Body, tc.flushes, "onetwo333")
			}
		})
	}
}

// trailerBody fills its response's trailers when it ends, as a transport
// does.
type trailerBody struct {
	io.Reader
	res  *http.Response
	sent http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		for k, v := range b.sent {
			b.res.Trailer[k] = v
		}
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// TestResponseTrailers: trailers the upstream announced are announced to
// the client and sent; one it did not announce is sent all the same.
func TestResponseTrailers(t *testing.T) {
	w := newHeaderLog()
	forwardVia(t, func(r *http.Request) (*http.Response, error) {
		res := respond(r, 200, nil, nil, -1)
		res.Trailer = http.Header{"Grpc-Status": nil}
		res.Body = &trailerBody{Reader: strings.NewReader("ok"), res: res, sent: http.Header{"Grpc-Status": {"0"}, "X-Extra": {"e"}}}
		return res, nil
	}, w, httptest.NewRequest("POST", "http://b/", nil))
	if diff := cmp.Diff([]string{"OK Trailer: Grpc-Status;"}, w.written); diff != "" {
		t.Errorf("response header (-want +got):\n%s", diff)
	}
	want := http.Header{"Grpc-Status": {"0"}, "X-Extra": {"e"}}
	if diff := cmp.Diff(want, w.Result().Trailer); diff != "" {
		t.Errorf("trailers the client got (-want +got):\n%s", diff)
	}
}

// closeRecorder records whether it was closed.
type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

// TestClientBodyLeftToItsServer: the transport closing the request's body
// does not close the client's (which belongs to the server that read it),
// and a request with no body goes with none.
func TestClientBodyLeftToItsServer(t *testing.T) {
	body := &closeRecorder{Reader: strings.NewReader("hello")}
	r := httptest.NewRequest("POST", "http://b/", nil)
	r.Body, r.ContentLength = body, 5
	var got string
	forwardVia(t, func(out *http.Request) (*http.Response, error) {
		b, _ := io.ReadAll(out.Body)
		got = string(b)
		out.Body.Close()
		return respond(out, 200, nil, strings.NewReader(""), 0), nil
	}, newHeaderLog(), r)
	if got != "hello" || body.closed {
		t.Errorf("upstream read %q, client's body closed %v; want hello, not closed", got, body.closed)
	}
	r = httptest.NewRequest("GET", "http://b/", strings.NewReader(""))
	r.ContentLength = 0
	forwardVia(t, func(out *http.Request) (*http.Response, error) {
		if out.Body != nil {
			t.Errorf("a request with no body went with one (%T): the transport would not resend it", out.Body)
		}
		return respond(out, 200, nil, strings.NewReader(""), 0), nil
	}, newHeaderLog(), r)
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "Text/Event-Stream; charset=utf-8": true, "text/event-stream ;x=y": true,
		"text/event-streams": false, "text/plain": false, "": false, "text/event": false,
	} {
		if got := isEventStream(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("isEventStream(%q) = %v, want %v", ct, got, want)
		}
	}
}

// A plain GET (no Upgrade asked for) answered 101 with no Upgrade header
// is refused (502), never tunnelled: net/http's Transport gave such a 101
// no writable body, and ReverseProxy answered 502.
func Test101ToAPlainRequestIsRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwardVia(t, func(r *http.Request) (*http.Response, error) {
			app, _ := net.Pipe()
			res := respond(r, http.StatusSwitchingProtocols, nil, nil, 0)
			res.Body = app
			return res, nil
		}, w, r)
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("the client got 101 %v for a request that asked for no upgrade", res.Header)
	}
}
