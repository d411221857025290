package accesslog

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// lockedBuffer is a bytes.Buffer safe for concurrent use, counting Writes.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// buildEnvoy returns the filter in the envoy format writing to a buffer,
// at level, with a clock that says t0 + elapsed; the JSON log is observed
// so that a test can see it stays empty.
func buildEnvoy(t *testing.T, level zapcore.Level, elapsed time.Duration) (*AccessLog, *lockedBuffer, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(level)
	out := &lockedBuffer{}
	f, err := (&Config{Format: "envoy"}).Build(filters.Env{
		Direction:     filters.Outbound,
		Log:           zap.NewNop(),
		AccessLog:     zap.New(core),
		AccessLogText: out,
		Now:           func() time.Time { return t0.Add(elapsed) },
		Route:         func(dst netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: dst} },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f.(*AccessLog), out, logs
}

// TestEnvoyGolden: the line of known requests, in Envoy's default format,
// against testdata/envoy.golden (go test ./filters/accesslog -update
// rewrites it; read the diff).
func TestEnvoyGolden(t *testing.T) {
	withEndpoint := func(i *filters.Info) *filters.Info {
		i.SetEndpoint(upstream.Endpoint{Addr: netip.MustParseAddrPort("10.4.5.6:8080")})
		return i
	}
	var got strings.Builder
	for _, tt := range []struct {
		name   string
		info   *filters.Info
		method string
		target string
		proto  string
		body   string
		header http.Header
		next   http.HandlerFunc
	}{
		{
			name: "answered by the upstream", info: withEndpoint(&filters.Info{Start: t0}),
			method: "GET", target: "http://cart.shop:8080/items?page=2",
			header: http.Header{"X-Request-Id": {"6f1c0a4e-7d0b-4c2f-9a51-3b8e2d7c9f10"}, "User-Agent": {"curl/8.5.0"},
				"X-Forwarded-For": {"203.0.113.9"}},
			next: func(w http.ResponseWriter, r *http.Request) {
				info := filters.FromContext(r.Context())
				info.StartAttempt()
				w.Header().Set("X-Envoy-Upstream-Service-Time", "9")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, "hello")
			},
		},
		{
			name: "connect failure after a body, over HTTP/2", info: withEndpoint(&filters.Info{Start: t0}),
			method: "POST", target: "http://cart.shop/items", proto: "HTTP/2.0", body: "{\"sku\": 42}",
			header: http.Header{"X-Request-Id": {"made-by-the-sidecar"}},
			next: func(w http.ResponseWriter, r *http.Request) {
				info := filters.FromContext(r.Context())
				info.StartAttempt()
				_, _ = io.Copy(io.Discard, r.Body)
				filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error")
			},
		},
		{
			name: "nothing known: every field a dash", info: &filters.Info{},
			method: "OPTIONS", target: "*", header: http.Header{"User-Agent": {""}},
			next: func(w http.ResponseWriter, r *http.Request) {},
		},
	} {
		f, out, _ := buildEnvoy(t, zapcore.InfoLevel, 12345678*time.Nanosecond)
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), tt.info), tt.method, tt.target, body)
		if tt.proto != "" {
			r.Proto, r.ProtoMajor, r.ProtoMinor = tt.proto, 2, 0
		}
		for k, v := range tt.header {
			r.Header[k] = v
		}
		f.ServeHTTP(httptest.NewRecorder(), r, tt.next)
		if out.writes != 1 {
			t.Errorf("%s: %d writes, want the line in one", tt.name, out.writes)
		}
		got.WriteString("# " + tt.name + "\n" + out.String())
	}
	path := filepath.Join("testdata", "envoy.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

// TestEnvoyLevel: the envoy format follows the access log's level (POST
// /logging?level=warn silences it) and never writes a JSON line.
func TestEnvoyLevel(t *testing.T) {
	for _, tt := range []struct {
		level zapcore.Level
		lines int
	}{{zapcore.InfoLevel, 1}, {zapcore.WarnLevel, 0}} {
		f, out, logs := buildEnvoy(t, tt.level, time.Millisecond)
		f.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "http://b/", nil), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		if n := strings.Count(out.String(), "\n"); n != tt.lines {
			t.Errorf("at %v: %d text lines, want %d", tt.level, n, tt.lines)
		}
		if logs.Len() != 0 {
			t.Errorf("at %v: %d JSON lines, want none", tt.level, logs.Len())
		}
	}
}

// TestJSONDefault: no format and format json are the same filter, writing
// the same JSON line, and nothing as text.
func TestJSONDefault(t *testing.T) {
	var lines []map[string]any
	for _, format := range []string{"", "json"} {
		core, logs := observer.New(zapcore.InfoLevel)
		out := &lockedBuffer{}
		f, err := (&Config{Format: format}).Build(filters.Env{
			AccessLog: zap.New(core), AccessLogText: out, Log: zap.NewNop(),
			Now: func() time.Time { return t0 },
		})
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequestWithContext(filters.NewContext(context.Background(), &filters.Info{Start: t0}), "GET", "http://b/x", nil)
		r.Header.Set("X-Request-Id", "r1")
		f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		if logs.Len() != 1 || out.writes != 0 {
			t.Fatalf("format %q: %d JSON lines and %d text writes, want 1 and 0", format, logs.Len(), out.writes)
		}
		lines = append(lines, logs.All()[0].ContextMap())
	}
	if diff := cmp.Diff(lines[0], lines[1]); diff != "" {
		t.Errorf("format json differs from the default (-default +json):\n%s", diff)
	}
	if lines[0]["request_id"] != "r1" {
		t.Errorf("request_id = %v, want r1", lines[0]["request_id"])
	}
}

func TestBuildFormatInvalid(t *testing.T) {
	for _, tt := range []struct {
		format string
		text   io.Writer
		want   string
	}{
		{"text", io.Discard, `format: want json or envoy, got "text"`},
		{"Envoy", io.Discard, `format: want json or envoy, got "Envoy"`},
		{"envoy", nil, `format: envoy: this proxy has no output for text lines`},
	} {
		_, err := (&Config{Format: tt.format}).Build(filters.Env{AccessLog: zap.NewNop(), AccessLogText: tt.text, Now: time.Now})
		if err == nil || err.Error() != tt.want {
			t.Errorf("format %q: error %v, want %s", tt.format, err, tt.want)
		}
	}
}

// BenchmarkFormats: the cost of one request's line in each format, the
// JSON one through zap's production JSON encoder, both to io.Discard.
func BenchmarkFormats(b *testing.B) {
	enc := zap.NewProductionEncoderConfig()
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
	for _, format := range []string{"json", "envoy"} {
		b.Run(format, func(b *testing.B) {
			f, err := (&Config{Format: format}).Build(filters.Env{AccessLog: log, AccessLogText: io.Discard, Log: zap.NewNop(), Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Envoy-Upstream-Service-Time", "3")
				_, _ = io.WriteString(w, "hello")
			})
			r := httptest.NewRequest("GET", "http://cart.shop:8080/items?page=2", nil)
			r.Header.Set("X-Request-Id", "6f1c0a4e-7d0b-4c2f-9a51-3b8e2d7c9f10")
			r.Header.Set("User-Agent", "curl/8.5.0")
			info := &filters.Info{Start: time.Now()}
			info.SetEndpoint(upstream.Endpoint{Addr: netip.MustParseAddrPort("10.4.5.6:8080")})
			r = r.WithContext(filters.NewContext(r.Context(), info))
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				f.ServeHTTP(w, r, next)
			}
		})
	}
}
