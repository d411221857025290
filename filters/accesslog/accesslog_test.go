package accesslog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535_897_932, time.FixedZone("CET", 3600))

// build returns the filter writing to a log observed at level, with a
// clock that says t0 + elapsed.
func build(t *testing.T, level zapcore.Level, dir filters.Direction, elapsed time.Duration) (*AccessLog, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(level)
	var c Config
	f, err := c.Build(filters.Env{
		Direction: dir,
		Log:       zap.NewNop(),
		AccessLog: zap.New(core),
		Now:       func() time.Time { return t0.Add(elapsed) },
		Route:     func(dst netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: dst} },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f.(*AccessLog), logs
}

func TestConfigDecodeStrict(t *testing.T) {
	for _, tt := range []struct {
		json string
		ok   bool
	}{
		{`{}`, true},
		{`{"format": "json"}`, true},
		{`{"format": "envoy"}`, true},
		{`{"format": 1}`, false},
		{`{"path": "/dev/stdout"}`, false},
	} {
		d := json.NewDecoder(strings.NewReader(tt.json))
		d.DisallowUnknownFields()
		var c Config
		if err := d.Decode(&c); (err == nil) != tt.ok {
			t.Errorf("decoding %s: error %v, want ok %v", tt.json, err, tt.ok)
		}
	}
}

func TestFields(t *testing.T) {
	full := func() *filters.Info {
		i := &filters.Info{
			Direction: filters.Inbound,
			Start:     t0,
			Source:    netip.MustParseAddrPort("10.0.0.7:51234"),
			Peer:      "spiffe://cluster.local/ns/shop/sa/cart",
		}
		i.SetEndpoint(upstream.Endpoint{Addr: netip.MustParseAddrPort("127.0.0.1:8080")})
		return i
	}
	for _, tt := range []struct {
		name   string
		info   func() *filters.Info
		method string
		target string
		body   string
		header http.Header
		next   http.HandlerFunc
		want   map[string]any
	}{
		{
			name: "answered by the upstream", info: full,
			method: "GET", target: "http://cart.shop:8080/items?page=2",
			header: http.Header{"X-Request-Id": {"6f1c"}, "User-Agent": {"curl/8.5.0"}},
			next: func(w http.ResponseWriter, r *http.Request) {
				info := filters.FromContext(r.Context())
				info.StartAttempt()
				info.SetUpstreamTime(1500 * time.Microsecond)
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, "hello")
			},
			want: map[string]any{
				"start": "2026-03-14T14:09:26.535Z", "direction": "inbound", "protocol": "HTTP/1.1",
				"method": "GET", "authority": "cart.shop:8080", "path": "/items?page=2",
				"code": int64(200), "flags": "-", "duration_ms": 12.345, "upstream_ms": 1.5,
				"bytes_in": int64(0), "bytes_out": int64(5), "attempts": int64(1),
				"src": "10.0.0.7:51234", "upstream": "127.0.0.1:8080", "peer": "spiffe://cluster.local/ns/shop/sa/cart",
				"request_id": "6f1c", "user_agent": "curl/8.5.0",
			},
		},
		{
			name: "connect failure after a body", info: full,
			method: "POST", target: "http://cart.shop/items", body: "{\"sku\": 42}",
			next: func(w http.ResponseWriter, r *http.Request) {
				info := filters.FromContext(r.Context())
				info.StartAttempt()
				_, _ = io.Copy(io.Discard, r.Body)
				info.SetUpstreamFailure(upstream.ConnectFailure)
				filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error")
			},
			want: map[string]any{
				"start": "2026-03-14T14:09:26.535Z", "direction": "inbound", "protocol": "HTTP/1.1",
				"method": "POST", "authority": "cart.shop", "path": "/items",
				"code": int64(503), "flags": "UF", "duration_ms": 12.345,
				"bytes_in": int64(11), "bytes_out": int64(len("upstream connect error\n")), "attempts": int64(1),
				"src": "10.0.0.7:51234", "upstream": "127.0.0.1:8080", "peer": "spiffe://cluster.local/ns/shop/sa/cart",
				"user_agent": "",
			},
		},
		{
			name: "no response, no proxy info", info: func() *filters.Info { return &filters.Info{} },
			method: "OPTIONS", target: "*",
			header: http.Header{"User-Agent": {"probe"}},
			next:   func(w http.ResponseWriter, r *http.Request) {},
			want: map[string]any{
				"start": "2026-03-14T14:09:26.535Z", "direction": "inbound", "protocol": "HTTP/1.1",
				"method": "OPTIONS", "authority": "example.com", "path": "*",
				"code": int64(0), "flags": "-", "duration_ms": 0.0,
				"bytes_in": int64(0), "bytes_out": int64(0), "attempts": int64(0),
				"user_agent": "probe",
			},
		},
		{
			name: "request ID set later in the chain", info: full,
			method: "HEAD", target: "/",
			next: func(w http.ResponseWriter, r *http.Request) {
				r.Header.Set("X-Request-Id", "made-up")
				r.Method, r.Host, r.URL.Path = "GET", "elsewhere", "/rewritten"
				w.Header().Set("Content-Length", "42")
				w.WriteHeader(http.StatusOK)
			},
			want: map[string]any{
				"start": "2026-03-14T14:09:26.535Z", "direction": "inbound", "protocol": "HTTP/1.1",
				"method": "HEAD", "authority": "example.com", "path": "/",
				"code": int64(200), "flags": "-", "duration_ms": 12.345,
				"bytes_in": int64(0), "bytes_out": int64(0), "attempts": int64(0),
				"src": "10.0.0.7:51234", "upstream": "127.0.0.1:8080", "peer": "spiffe://cluster.local/ns/shop/sa/cart",
				"request_id": "made-up", "user_agent": "",
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			info := tt.info()
			elapsed := 12345678 * time.Nanosecond
			if info.Start.IsZero() {
				elapsed = 0 // the filter's start is the clock's only time
			}
			f, logs := build(t, zapcore.InfoLevel, filters.Inbound, elapsed)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), info), tt.method, tt.target, body)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			f.ServeHTTP(httptest.NewRecorder(), r, tt.next)
			entries := logs.All()
			if len(entries) != 1 {
				t.Fatalf("%d lines logged, want 1", len(entries))
			}
			e := entries[0]
			if e.Message != "access" || e.Level != zapcore.InfoLevel {
				t.Errorf("logged %v %q, want info \"access\"", e.Level, e.Message)
			}
			if diff := cmp.Diff(tt.want, e.ContextMap()); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPanic: when a later filter panics (the router aborting a response
// does), the line is written and the panic goes on with its value.
func TestPanic(t *testing.T) {
	for _, value := range []any{http.ErrAbortHandler, "a bug"} {
		t.Run(fmt.Sprint(value), func(t *testing.T) {
			f, logs := build(t, zapcore.InfoLevel, filters.Outbound, time.Millisecond)
			info := &filters.Info{Start: t0}
			r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), info), "GET", "http://b/stream", nil)
			var p any
			func() {
				defer func() { p = recover() }()
				f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					info.StartAttempt()
					_, _ = io.WriteString(w, "partial")
					info.AddFlags(filters.UpstreamReset)
					panic(value)
				}))
			}()
			if p != value {
				t.Errorf("recovered %v, want %v", p, value)
			}
			entries := logs.All()
			if len(entries) != 1 {
				t.Fatalf("%d lines logged, want 1", len(entries))
			}
			m := entries[0].ContextMap()
			got := []any{m["direction"], m["code"], m["flags"], m["bytes_out"], m["duration_ms"]}
			want := []any{"outbound", int64(200), "UC", int64(7), 1.0}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("direction, code, flags, bytes_out, duration_ms (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBody checks the body count, and that the inbound request keeps its
// own body.
func TestBody(t *testing.T) {
	f, logs := build(t, zapcore.InfoLevel, filters.Outbound, 0)
	const body = "0123456789abcdef"
	r := httptest.NewRequest("PUT", "http://b/", strings.NewReader(body))
	inbound := r.Body
	var got []byte
	f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(io.LimitReader(r.Body, 10))
	}))
	if string(got) != body[:10] {
		t.Errorf("next read %q, want %q", got, body[:10])
	}
	if n := logs.All()[0].ContextMap()["bytes_in"]; n != int64(10) {
		t.Errorf("bytes_in = %v, want 10", n)
	}
	if r.Body != inbound {
		t.Error("the inbound request's body was replaced")
	}
}

// TestDisabled: with an access log that takes no info lines, next gets the
// request and the writer as they are.
func TestDisabled(t *testing.T) {
	f, logs := build(t, zapcore.WarnLevel, filters.Outbound, 0)
	r := httptest.NewRequest("POST", "http://b/", bytes.NewReader([]byte("x")))
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r, http.HandlerFunc(func(gw http.ResponseWriter, gr *http.Request) {
		if gw != w || gr != r {
			t.Error("next got a wrapped writer or request")
		}
	}))
	if n := logs.Len(); n != 0 {
		t.Errorf("%d lines logged, want none", n)
	}
}

// hijackable is a ResponseWriter whose connection can be hijacked.
type hijackable struct {
	*httptest.ResponseRecorder
	conn net.Conn
}

func (h *hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}

// TestUpgrade: the router writes an upgrade's 101 on the hijacked
// connection, past the ResponseWriter; the line says 101 all the same.
func TestUpgrade(t *testing.T) {
	f, logs := build(t, zapcore.InfoLevel, filters.Inbound, time.Second)
	client, server := net.Pipe()
	defer client.Close()
	go func() { _, _ = io.Copy(io.Discard, client) }()
	info := &filters.Info{Start: t0, Upgrade: "websocket"}
	r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), info), "GET", "http://chat/ws", nil)
	f.ServeHTTP(&hijackable{httptest.NewRecorder(), server}, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
	}))
	m := logs.All()[0].ContextMap()
	if m["code"] != int64(101) || m["bytes_out"] != int64(0) {
		t.Errorf("code %v, bytes_out %v; want 101, 0", m["code"], m["bytes_out"])
	}
}

// TestHijackUnsupported: over a writer that cannot hijack (HTTP/2's), the
// filter's writer cannot either, and the line says no status was sent.
func TestHijackUnsupported(t *testing.T) {
	f, logs := build(t, zapcore.InfoLevel, filters.Inbound, time.Second)
	r := httptest.NewRequest("GET", "http://chat/ws", nil)
	f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, err := http.NewResponseController(w).Hijack(); !errors.Is(err, http.ErrNotSupported) {
			t.Errorf("Hijack: %v, want %v", err, http.ErrNotSupported)
		}
	}))
	if m := logs.All()[0].ContextMap(); m["code"] != int64(0) {
		t.Errorf("code %v, want 0", m["code"])
	}
}

// completeBody has all arrived, as proxy/h2's server says of a body.
type completeBody struct{ *strings.Reader }

func (b completeBody) Close() error          { return nil }
func (b completeBody) Complete() (int, bool) { return b.Len(), true }

// The counting wrapper passes on what the body says of its end.
func TestCountingBodyPassesComplete(t *testing.T) {
	var b io.ReadCloser = &countingBody{ReadCloser: completeBody{strings.NewReader("held")}, n: new(atomic.Int64)}
	cb, ok := b.(interface{ Complete() (int, bool) })
	if !ok {
		t.Fatal("countingBody hides Complete")
	}
	if n, done := cb.Complete(); n != 4 || !done {
		t.Errorf("Complete() = %d, %v; want 4, true", n, done)
	}
}
