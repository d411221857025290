package headers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
)

func build(t testing.TB, c Config) filters.Filter {
	t.Helper()
	f, err := c.Build(filters.Env{Now: time.Now})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return f
}

func TestRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Changes
		in   http.Header
		want http.Header
	}{
		{"nothing", Changes{}, http.Header{"A": {"1"}}, http.Header{"A": {"1"}}},
		{"set new", Changes{Set: map[string]string{"x-env": "prod"}},
			http.Header{"A": {"1"}}, http.Header{"A": {"1"}, "X-Env": {"prod"}}},
		{"set replaces every value", Changes{Set: map[string]string{"X-Env": "prod"}},
			http.Header{"X-Env": {"dev", "test"}}, http.Header{"X-Env": {"prod"}}},
		{"set empty value", Changes{Set: map[string]string{"X-Empty": ""}},
			http.Header{}, http.Header{"X-Empty": {""}}},
		{"add new", Changes{Add: map[string]string{"via-mesh": "pillion"}},
			http.Header{}, http.Header{"Via-Mesh": {"pillion"}}},
		{"add appends", Changes{Add: map[string]string{"Accept": "text/plain"}},
			http.Header{"Accept": {"application/json"}}, http.Header{"Accept": {"application/json", "text/plain"}}},
		{"set then add", Changes{Set: map[string]string{"x-tag": "a"}, Add: map[string]string{"X-TAG": "b"}},
			http.Header{"X-Tag": {"old"}}, http.Header{"X-Tag": {"a", "b"}}},
		{"remove, case-insensitive", Changes{Remove: []string{"cookie", "X-DEBUG", "absent"}},
			http.Header{"Cookie": {"s=1"}, "X-Debug": {"1", "2"}, "A": {"1"}}, http.Header{"A": {"1"}}},
		{"remove twice", Changes{Remove: []string{"x-a", "X-A"}},
			http.Header{"X-A": {"1"}}, http.Header{}},
		{"all three", Changes{
			Set:    map[string]string{"X-Set": "s"},
			Add:    map[string]string{"X-Add": "a"},
			Remove: []string{"X-Remove"},
		}, http.Header{"X-Set": {"0"}, "X-Add": {"0"}, "X-Remove": {"0"}}, http.Header{"X-Set": {"s"}, "X-Add": {"0", "a"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := build(t, Config{Request: tt.cfg, Response: Changes{Set: map[string]string{"X-Resp": "1"}}})
			r := httptest.NewRequest(http.MethodGet, "http://b/", nil)
			r.Header = tt.in
			var seen http.Header
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = r.Header.Clone()
				w.WriteHeader(http.StatusAccepted)
			})
			w := httptest.NewRecorder()
			f.ServeHTTP(w, r, next)
			if seen == nil {
				t.Fatal("next was not called")
			}
			if diff := cmp.Diff(tt.want, seen); diff != "" {
				t.Errorf("request headers (-want +got):\n%s", diff)
			}
			if w.Code != http.StatusAccepted {
				t.Errorf("status = %d, want 202", w.Code)
			}
			if seen.Get("X-Resp") != "" {
				t.Error("a response change reached the request")
			}
		})
	}
}

// changes are the response changes of TestResponse.
var changes = Changes{
	Set:    map[string]string{"Server": "pillion", "X-Frame-Options": "DENY"},
	Add:    map[string]string{"Vary": "Origin"},
	Remove: []string{"X-Powered-By", "x-content-type-options"},
}

func TestResponse(t *testing.T) {
	for _, tt := range []struct {
		name string
		next http.HandlerFunc
		code int
		want http.Header
		body string
	}{
		{
			name: "WriteHeader",
			next: func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				h.Set("Server", "gunicorn")
				h.Set("Vary", "Accept")
				h.Set("X-Powered-By", "php")
				h.Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, "missing")
				w.Header().Set("X-Too-Late", "1") // after the header was written
			},
			code: http.StatusNotFound,
			want: http.Header{
				"Server": {"pillion"}, "X-Frame-Options": {"DENY"}, "Vary": {"Accept", "Origin"},
				"Content-Type": {"text/html"},
			},
			body: "missing",
		},
		{
			name: "Write alone",
			next: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Powered-By", "php")
				w.Header().Set("Content-Type", "text/plain")
				_, _ = io.WriteString(w, "hello")
			},
			code: http.StatusOK,
			want: http.Header{
				"Server": {"pillion"}, "X-Frame-Options": {"DENY"}, "Vary": {"Origin"},
				"Content-Type": {"text/plain"},
			},
			body: "hello",
		},
		{
			name: "Flush first",
			next: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				if err := http.NewResponseController(w).Flush(); err != nil {
					t.Errorf("Flush: %v", err)
				}
				_, _ = io.WriteString(w, "data: 1\n\n")
			},
			code: http.StatusOK,
			want: http.Header{
				"Server": {"pillion"}, "X-Frame-Options": {"DENY"}, "Vary": {"Origin"},
				"Content-Type": {"text/event-stream"},
			},
			body: "data: 1\n\n",
		},
		{
			name: "proxy-made reply",
			next: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Powered-By", "php") // Reply clears it anyway
				filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error")
			},
			code: http.StatusServiceUnavailable,
			want: http.Header{
				"Server": {"pillion"}, "X-Frame-Options": {"DENY"}, "Vary": {"Origin"},
				"Content-Type":           {"text/plain; charset=utf-8"},
				"Pillion-Proxy-Error":    {"upstream connect error"},
				"Pillion-Response-Flags": {"UF"},
			},
			body: "upstream connect error\n",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := build(t, Config{Response: changes})
			w := httptest.NewRecorder()
			f.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://b/", nil), tt.next)
			if w.Code != tt.code {
				t.Errorf("status = %d, want %d", w.Code, tt.code)
			}
			if diff := cmp.Diff(tt.want, w.Result().Header); diff != "" {
				t.Errorf("response headers (-want +got):\n%s", diff)
			}
			if got := w.Body.String(); got != tt.body {
				t.Errorf("body = %q, want %q", got, tt.body)
			}
		})
	}
}

// TestResponseOverHTTP runs the filter in a real server: 1xx responses
// reach the client unchanged, the final one changed, and
// http.ResponseController reaches the server's writer through the wrapper.
func TestResponseOverHTTP(t *testing.T) {
	f := build(t, Config{Response: Changes{
		Set:    map[string]string{"X-Final": "yes"},
		Remove: []string{"Link"},
	}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
				t.Errorf("SetWriteDeadline through the wrapper: %v", err)
			}
			w.Header().Set("Link", "</style.css>; rel=preload; as=style")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Set("Link", "</final.css>; rel=preload; as=style")
			if err := rc.Flush(); err != nil {
				t.Errorf("Flush through the wrapper: %v", err)
			}
			_, _ = io.WriteString(w, "body")
		}))
	}))
	defer srv.Close()

	var early []http.Header
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		if code == http.StatusEarlyHints {
			early = append(early, http.Header(h))
		}
		return nil
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(early) != 1 {
		t.Fatalf("got %d 103 responses, want 1", len(early))
	}
	if got, want := early[0].Get("Link"), "</style.css>; rel=preload; as=style"; got != want {
		t.Errorf("103 Link = %q, want %q (the 103 must not be changed)", got, want)
	}
	if got := early[0].Get("X-Final"); got != "" {
		t.Errorf("103 X-Final = %q, want none", got)
	}
	if resp.StatusCode != http.StatusOK || string(body) != "body" {
		t.Errorf("final response = %d %q, want 200 \"body\"", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Final"); got != "yes" {
		t.Errorf("final X-Final = %q, want \"yes\"", got)
	}
	if got := resp.Header.Values("Link"); len(got) != 0 {
		t.Errorf("final Link = %q, want it removed", got)
	}
}

func TestReplyFlags(t *testing.T) {
	f := build(t, Config{Response: Changes{Add: map[string]string{"X-Mesh": "pillion"}}})
	info := &filters.Info{}
	r := httptest.NewRequest(http.MethodHead, "http://b/", nil)
	r = r.WithContext(filters.NewContext(r.Context(), info))
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		filters.Reply(w, r, http.StatusTooManyRequests, filters.RateLimited, "rate limited")
	}))
	if got := info.Flags(); got != filters.RateLimited {
		t.Errorf("flags = %v, want RL", got)
	}
	if w.Code != http.StatusTooManyRequests || w.Header().Get("X-Mesh") != "pillion" || w.Body.Len() != 0 {
		t.Errorf("HEAD reply = %d, X-Mesh %q, body %q; want 429, \"pillion\", none",
			w.Code, w.Header().Get("X-Mesh"), w.Body.String())
	}
}

func TestBuildInvalid(t *testing.T) {
	set := func(name, value string) Changes { return Changes{Set: map[string]string{name: value}} }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"Connection", Config{Request: set("Connection", "close")},
			`request.set["Connection"]: "Connection" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"keep-alive lowercase", Config{Response: Changes{Add: map[string]string{"keep-alive": "timeout=5"}}},
			`response.add["keep-alive"]: "keep-alive" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"Proxy-Connection", Config{Request: Changes{Remove: []string{"X-A", "Proxy-Connection"}}},
			`request.remove[1]: "Proxy-Connection" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"Transfer-Encoding", Config{Response: set("Transfer-Encoding", "chunked")},
			`response.set["Transfer-Encoding"]: "Transfer-Encoding" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"Upgrade", Config{Request: set("Upgrade", "websocket")},
			`request.set["Upgrade"]: "Upgrade" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"TE", Config{Request: set("TE", "trailers")},
			`request.set["TE"]: "TE" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"Trailer", Config{Response: Changes{Remove: []string{"trailer"}}},
			`response.remove[0]: "trailer" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{"Host", Config{Request: set("host", "evil.example")},
			`request.set["host"]: "host" is the request's authority, not a header a filter may change`},
		{"pseudo-header", Config{Request: set(":authority", "b")},
			`request.set[":authority"]: ":authority" is an HTTP/2 pseudo-header, not a header a filter may change`},
		{"Content-Length", Config{Response: set("Content-Length", "0")},
			`response.set["Content-Length"]: "Content-Length" frames the body, which the proxy manages`},
		{"space in name", Config{Request: set("X Env", "1")},
			`request.set["X Env"]: "X Env" is not a valid header name`},
		{"empty name", Config{Response: Changes{Remove: []string{""}}},
			`response.remove[0]: "" is not a valid header name`},
		{"non-ASCII name", Config{Request: set("X-Café", "1")},
			`request.set["X-Café"]: "X-Café" is not a valid header name`},
		{"newline in value", Config{Response: set("X-A", "1\r\nSet-Cookie: s=1")},
			`response.set["X-A"]: "1\r\nSet-Cookie: s=1" is not a valid header value`},
		{"NUL in value", Config{Request: Changes{Add: map[string]string{"X-A": "a\x00b"}}},
			`request.add["X-A"]: "a\x00b" is not a valid header value`},
		{"leading space", Config{Request: set("X-A", " a")},
			`request.set["X-A"]: " a" has leading or trailing whitespace, which net/http would drop`},
		{"trailing tab", Config{Response: Changes{Add: map[string]string{"X-A": "a\t"}}},
			`response.add["X-A"]: "a\t" has leading or trailing whitespace, which net/http would drop`},
		{"same header twice", Config{Request: Changes{Set: map[string]string{"x-a": "1", "X-A": "2"}}},
			`request.set["x-a"]: same header as "X-A"`},
		{"remove what is set", Config{Response: Changes{Set: map[string]string{"X-A": "1"}, Remove: []string{"x-a"}}},
			`response.remove[0]: "x-a" is also in response.set; remove runs first, so this does nothing`},
		{"remove what is added", Config{Request: Changes{Add: map[string]string{"X-A": "1"}, Remove: []string{"X-B", "X-A"}}},
			`request.remove[1]: "X-A" is also in request.add; remove runs first, so this does nothing`},
		{"request before response", Config{Request: set("Host", "a"), Response: set("Connection", "close")},
			`request.set["Host"]: "Host" is the request's authority, not a header a filter may change`},
		{"set before add, sorted", Config{Request: Changes{
			Set: map[string]string{"X-Ok": "1", "b c": "1", "a b": "1"},
			Add: map[string]string{"Connection": "close"},
		}}, `request.set["a b"]: "a b" is not a valid header name`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := tt.cfg.Build(filters.Env{Now: time.Now})
			if err == nil {
				t.Fatalf("Build = %v, want an error", f)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error = %q\nwant    %q", got, tt.want)
			}
			var fe *filters.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is a %T, want a *filters.FieldError", err)
			}
		})
	}
}

// FuzzConfig feeds header names and values to Build in each place they can
// go: it must never panic, and a config that builds must leave only valid
// headers that survive being written and read back, none of them one a
// filter may not change.
func FuzzConfig(f *testing.F) {
	for _, s := range [][2]string{
		{"X-Env", "prod"}, {"x-env", ""}, {"Connection", "close"}, {"host", "b"}, {":path", "/"},
		{"X Env", "1"}, {"X-A", "a\r\nb"}, {"X-A", " a"}, {"X-A", "caf\xc3\xa9"}, {"X-A", "a\tb"},
		{"Te", "trailers"}, {"x_y", "1"}, {"Content-length", "5"}, {"", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		m := map[string]string{name: value}
		for _, c := range []Changes{{Set: m}, {Add: m}, {Remove: []string{name}}} {
			for _, cfg := range []Config{{Request: c}, {Response: c}} {
				flt, err := cfg.Build(filters.Env{Now: time.Now})
				if err != nil {
					var fe *filters.FieldError
					if !errors.As(err, &fe) || fe.Path == "" || fe.Msg == "" {
						t.Fatalf("Build(%+v) = %v, want a *filters.FieldError with a path", cfg, err)
					}
					continue
				}
				checkServed(t, flt)
			}
		}
	})
}

// checkServed runs a request through f and checks the headers of the
// request next sees and of the response.
func checkServed(t *testing.T, f filters.Filter) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "http://b/", nil)
	r.Header.Set("X-Env", "dev")
	var seen http.Header
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.Header().Set("X-Env", "dev")
		_, _ = io.WriteString(w, "ok")
	}))
	if seen == nil {
		t.Fatal("next was not called")
	}
	if err := headerProblem(seen); err != nil {
		t.Errorf("request: %v", err)
	}
	if err := headerProblem(w.Result().Header); err != nil {
		t.Errorf("response: %v", err)
	}
}

// headerProblem says what is wrong with h: a name a filter may not
// change, an invalid value, or a change when h is written and read back.
func headerProblem(h http.Header) error {
	for k, vs := range h {
		if _, err := checkName(k); err != nil {
			return err
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("%s: invalid value %q", k, v)
			}
		}
	}
	var b bytes.Buffer
	if err := h.Write(&b); err != nil {
		return err
	}
	b.WriteString("\r\n")
	back, err := textproto.NewReader(bufio.NewReader(&b)).ReadMIMEHeader()
	if err != nil {
		return fmt.Errorf("%q does not parse back: %w", b.String(), err)
	}
	if diff := cmp.Diff(h, http.Header(back)); diff != "" {
		return fmt.Errorf("headers change when written and read back (-before +after):\n%s", diff)
	}
	return nil
}

// TestHeaderProblem shows that the fuzzer's check can fail.
func TestHeaderProblem(t *testing.T) {
	for _, tt := range []struct {
		h    http.Header
		want string
	}{
		{http.Header{"X-A": {"a", "b"}, "X-B": {""}}, ""},
		{http.Header{"Connection": {"close"}}, `"Connection" is hop-by-hop: it belongs to one connection, which the proxy manages`},
		{http.Header{"X-A": {"a\nb"}}, `X-A: invalid value "a\nb"`},
		{http.Header{"X-A": {" a"}}, "headers change when written and read back"},
	} {
		err := headerProblem(tt.h)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)) {
			t.Errorf("headerProblem(%q) = %v, want %q", tt.h, err, tt.want)
		}
	}
}

// TestDecode: the config file's field names, decoded as the loader does.
func TestDecode(t *testing.T) {
	in := `{"request": {"set": {"x-env": "prod"}, "add": {"x-tag": "a"}, "remove": ["cookie"]},
		"response": {"set": {"server": "pillion"}}}`
	want := Config{
		Request:  Changes{Set: map[string]string{"x-env": "prod"}, Add: map[string]string{"x-tag": "a"}, Remove: []string{"cookie"}},
		Response: Changes{Set: map[string]string{"server": "pillion"}},
	}
	var got Config
	d := json.NewDecoder(strings.NewReader(in))
	d.DisallowUnknownFields()
	if err := d.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}
	d = json.NewDecoder(strings.NewReader(`{"request": {"append": {"x-a": "1"}}}`))
	d.DisallowUnknownFields()
	if err := d.Decode(&got); err == nil || err.Error() != `json: unknown field "append"` {
		t.Errorf("Decode of an unknown field = %v, want it refused", err)
	}
}
