package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// The tests in this file drive real clients in pod a through both sidecars
// to the app in pod b (serveApp) and check that HTTP arrives as it was
// sent: on the mesh, an HTTP/1.1 request crosses a's sidecar as HTTP/1.1,
// the pooled HTTP/2 between the sidecars, and HTTP/1.1 again to the app; an
// h2c request stays HTTP/2 all the way.

// podClient is meshtest's HTTP client for a pod, closed with the test.
type podClient struct{ *meshtest.HTTPClient }

func newPodClient(t *testing.T, pod *testpod.Pod, h2c bool) *podClient {
	t.Helper()
	pc := &podClient{meshtest.NewHTTPClient(pod, h2c)}
	t.Cleanup(pc.CloseIdleConnections)
	return pc
}

// do sends req and reads the whole response body; a transport error fails t.
func (pc *podClient) do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := pc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return res, body
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// clientProtocols are the two ways a client in pod a speaks to the app.
var clientProtocols = []struct {
	name string
	h2c  bool
	curl string // curl's flag for it
}{
	{"HTTP/1.1", false, "--http1.1"},
	{"h2c", true, "--http2-prior-knowledge"},
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestHTTPKeepAliveAndBodies(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	base := "http://" + m.bAddr

	for _, p := range clientProtocols {
		t.Run(p.name+"/one client connection", func(t *testing.T) {
			pc := newPodClient(t, m.a.Pod, p.h2c)
			checkBodiless(t, pc, base)
			checkChunkedDownload(t, pc, base, p.h2c)
			checkChunkedUpload(t, pc, base, p.h2c)
			if res, _ := pc.do(t, newRequest(t, "GET", base+"/echo", nil)); res.StatusCode != 200 {
				t.Errorf("GET /echo after all that: %d", res.StatusCode)
			}
			// A body sent after a bodiless response, or a missing one,
			// would have broken the connection's framing.
			if n := pc.Dials.Load(); n != 1 {
				t.Errorf("the client opened %d connections, want 1: a keep-alive connection broke", n)
			}
		})

		if p.h2c {
			// curl 7.88 (Debian 12) fails to reuse an h2c prior-knowledge
			// connection, even straight to the app (curl/curl#10634); the
			// Go client above covers h2c.
			continue
		}
		t.Run(p.name+"/curl with several URLs", func(t *testing.T) {
			paths := []string{"/echo", "/chunks?n=3", "/status?code=204", "/fixed", "/echo"}
			args := []string{p.curl, "-w", "%{http_code} %{num_connects}\n"}
			for _, path := range paths {
				args = append(args, "-o", "/dev/null", base+path)
			}
			got := strings.Fields(curl(t, m.a.Pod, args...))
			want := strings.Fields("200 1 200 0 204 0 200 0 200 0")
			if !slices.Equal(got, want) {
				t.Errorf("curl: status and new connections per URL = %q, want %q (one connection for all)", got, want)
			}
		})
	}
}

// checkBodiless sends GET and HEAD for a fixed-length body, and requests
// answered 204 and 304, on pc.
func checkBodiless(t *testing.T, pc *podClient, base string) {
	t.Helper()
	res, body := pc.do(t, newRequest(t, "GET", base+"/fixed", nil))
	if res.StatusCode != 200 || string(body) != "hello" || res.ContentLength != 5 {
		t.Errorf("GET /fixed: %d, Content-Length %d, %q; want 200, 5, hello", res.StatusCode, res.ContentLength, body)
	}

	res, body = pc.do(t, newRequest(t, "HEAD", base+"/fixed", nil))
	if res.StatusCode != 200 || len(body) != 0 || res.ContentLength != 5 {
		t.Errorf("HEAD /fixed: %d, Content-Length %d, body %q; want 200, the GET's length 5, no body", res.StatusCode, res.ContentLength, body)
	}

	res, body = pc.do(t, newRequest(t, "GET", base+"/status?code=204", nil))
	if res.StatusCode != 204 || len(body) != 0 || res.Header.Get("Content-Length") != "" || len(res.TransferEncoding) != 0 {
		t.Errorf("GET 204: %d, Content-Length %q, Transfer-Encoding %q, body %q; want 204 without body or framing",
			res.StatusCode, res.Header.Get("Content-Length"), res.TransferEncoding, body)
	}

	req := newRequest(t, "GET", base+"/status?code=304", nil)
	req.Header.Set("If-None-Match", `"v1"`)
	res, body = pc.do(t, req)
	if res.StatusCode != 304 || len(body) != 0 || res.Header.Get("ETag") != `"v1"` {
		t.Errorf("GET 304: %d, ETag %q, body %q; want 304, \"v1\", no body", res.StatusCode, res.Header.Get("ETag"), body)
	}
}

// checkChunkedDownload fetches a response the app flushes in pieces before
// it knows its length.
func checkChunkedDownload(t *testing.T, pc *podClient, base string, h2c bool) {
	t.Helper()
	const chunks = 20
	var want strings.Builder
	for i := range chunks {
		want.WriteString(chunkText(i))
	}
	res, body := pc.do(t, newRequest(t, "GET", base+"/chunks?n="+strconv.Itoa(chunks), nil))
	if string(body) != want.String() {
		t.Errorf("GET /chunks: body of %d bytes differs from the app's %d", len(body), want.Len())
	}
	// Nobody on the way may have buffered the body to count it.
	if res.ContentLength != -1 || (!h2c && !slices.Equal(res.TransferEncoding, []string{"chunked"})) {
		t.Errorf("GET /chunks: Content-Length %d, Transfer-Encoding %q; want a streamed response of unknown length",
			res.ContentLength, res.TransferEncoding)
	}
}

// checkChunkedUpload sends a body of unknown length with a request trailer;
// /body answers what it got, with a response trailer.
func checkChunkedUpload(t *testing.T, pc *podClient, base string, h2c bool) {
	t.Helper()
	var upload []byte
	var parts []io.Reader
	for i := range 7 {
		part := bytes.Repeat([]byte{byte('a' + i)}, 100_003)
		upload = append(upload, part...)
		parts = append(parts, bytes.NewReader(part))
	}
	req := newRequest(t, "POST", base+"/body", io.MultiReader(parts...))
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Req-Trailer": {"sent after the body"}}
	res, body := pc.do(t, req)
	var saw bodySaw
	if err := json.Unmarshal(body, &saw); err != nil {
		t.Fatalf("POST /body: %d %q: %v", res.StatusCode, body, err)
	}
	if saw.Bytes != int64(len(upload)) || saw.SHA256 != sha256Hex(upload) {
		t.Errorf("app received %d bytes, sha256 %s; want %d, %s", saw.Bytes, saw.SHA256, len(upload), sha256Hex(upload))
	}
	if saw.ContentLength != -1 {
		t.Errorf("app saw Content-Length %d for a chunked upload, want -1 (streamed, not buffered)", saw.ContentLength)
	}
	// The app speaks the client's protocol: chunked HTTP/1.1, or HTTP/2.
	if wantTE := []string{"chunked"}; !h2c && !slices.Equal(saw.TransferEncoding, wantTE) {
		t.Errorf("app saw Transfer-Encoding %q, want %q", saw.TransferEncoding, wantTE)
	}
	if got := saw.Trailer.Get("X-Req-Trailer"); got != "sent after the body" {
		t.Errorf("app saw request trailers %v, want X-Req-Trailer: sent after the body", saw.Trailer)
	}
	if got := res.Trailer.Get("X-Body-Sha256"); got != sha256Hex(upload) {
		t.Errorf("response trailers %v, want X-Body-Sha256: %s", res.Trailer, sha256Hex(upload))
	}
}

func TestHTTPExpectContinue(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	body := make([]byte, 64<<10) // curl sends Expect only for bodies over 1 KiB
	for i := range body {
		body[i] = byte(i * 31 >> 3)
	}
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Fatal(err)
	}
	// curl -v prints the interim response as "< HTTP/1.1 100 Continue" or "< HTTP/2 100".
	interim := regexp.MustCompile(`(?m)^< HTTP/[0-9.]+ 100\b`)

	for _, p := range clientProtocols {
		t.Run(p.name, func(t *testing.T) {
			var times []time.Duration
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				cmd := m.a.Pod.Command(ctx, testpod.Root, "curl", "-sS", "-v", "--max-time", "10", p.curl,
					"-H", "Expect: 100-continue", "--data-binary", "@"+file, "-w", "\n%{time_total}",
					"http://"+m.bAddr+"/body")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				cancel()
				if err != nil {
					t.Fatalf("curl: %v\n%s", err, stderr.String())
				}
				js, total, _ := strings.Cut(string(out), "\n")
				var saw bodySaw
				if err := json.Unmarshal([]byte(js), &saw); err != nil {
					t.Fatalf("answer %q: %v", out, err)
				}
				if saw.Bytes != int64(len(body)) || saw.SHA256 != sha256Hex(body) {
					t.Errorf("app received %d bytes, sha256 %s; want %d, %s", saw.Bytes, saw.SHA256, len(body), sha256Hex(body))
				}
				if !interim.Match(stderr.Bytes()) {
					t.Errorf("curl got no 100 Continue:\n%s", stderr.String())
				}
				secs, err := strconv.ParseFloat(strings.TrimSpace(total), 64)
				if err != nil {
					t.Fatalf("time_total %q: %v", total, err)
				}
				times = append(times, time.Duration(secs*float64(time.Second)))
			}
			// Without the 100 Continue curl sends the body after its 1 s
			// expect time-out.
			t.Logf("total times %v", times)
			if med := median(times); med > 500*time.Millisecond {
				t.Errorf("median total time %v (runs %v), want well under curl's 1 s expect time-out", med, times)
			}
		})
	}
}

func TestHTTPWebSocket(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.a.Pod.Dial(ctx, "tcp", m.bAddr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	cfg, err := websocket.NewConfig("ws://b.shop:8080/ws", "http://a.shop/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, c)
	if err != nil {
		t.Fatalf("handshake through the sidecars: %v", err)
	}
	defer ws.Close()

	var saw appSaw
	if err := websocket.JSON.Receive(ws, &saw); err != nil {
		t.Fatalf("app's first message: %v", err)
	}
	if saw.Method != "GET" || saw.Proto != "HTTP/1.1" || !strings.EqualFold(saw.Header.Get("Upgrade"), "websocket") ||
		!strings.Contains(strings.ToLower(saw.Header.Get("Connection")), "upgrade") || saw.Header.Get("Sec-Websocket-Key") == "" {
		t.Errorf("app saw the handshake as %s %s, Upgrade %q, Connection %q, Sec-WebSocket-Key %q; want GET HTTP/1.1 with the upgrade headers",
			saw.Method, saw.Proto, saw.Header.Get("Upgrade"), saw.Header.Get("Connection"), saw.Header.Get("Sec-Websocket-Key"))
	}

	msgs := [][]byte{[]byte("hello"), []byte("second message"), {}, bytes.Repeat([]byte("0123456789abcdef"), 16<<10)}
	for i := range 20 {
		msgs = append(msgs, fmt.Appendf(nil, "message %d", i))
	}
	for i, msg := range msgs {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		var got []byte
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("message %d: echoed %d bytes, sent %d", i, len(got), len(msg))
		}
	}
}

func TestHTTPServerSentEvents(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	for _, p := range clientProtocols {
		t.Run(p.name, func(t *testing.T) {
			pc := newPodClient(t, m.a.Pod, p.h2c)
			var firsts []time.Duration
			for range 3 {
				start := time.Now()
				res, err := pc.Get("http://" + m.bAddr + "/sse")
				if err != nil {
					t.Fatal(err)
				}
				if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
					t.Errorf("Content-Type %q", ct)
				}
				r := bufio.NewReader(res.Body)
				at := func(want string) time.Duration {
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							t.Fatalf("waiting for %q: %v", want, err)
						}
						if strings.TrimSpace(line) == want {
							return time.Since(start)
						}
					}
				}
				first, second := at("data: one"), at("data: two")
				res.Body.Close()
				firsts = append(firsts, first)
				// The app waits 500 ms between the events: a proxy that
				// held the first back would deliver both together.
				if second < 450*time.Millisecond {
					t.Errorf("second event after %v, want ≥ 500 ms (the app waits that long)", second)
				}
			}
			t.Logf("first event after %v", firsts)
			if med := median(firsts); med > 300*time.Millisecond {
				t.Errorf("first event after %v (median of %v), want < 300 ms: it was held back until the second", med, firsts)
			}
		})
	}
}

// patternReader yields size bytes of a repeated pattern, generated as it is
// read, and hashes what it yields.
type patternReader struct {
	left int64
	pat  []byte
	off  int
	h    hash.Hash
}

func newPatternReader(size int64) *patternReader {
	pat := make([]byte, 1<<20+7) // an odd length, so no buffer lines up with it
	for i := range pat {
		pat[i] = byte(i*7 + i>>11)
	}
	return &patternReader{left: size, pat: pat, h: sha256.New()}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.pat[r.off:])
		r.off = (r.off + c) % len(r.pat)
		n += c
	}
	r.h.Write(p)
	r.left -= int64(n)
	return n, nil
}

// watchSidecarsRSS samples the resident memory of m's two sidecars from
// now on. The func it returns stops that and fails t for each sidecar
// whose peak is more than bound above where it started, saying why that
// is wrong.
func watchSidecarsRSS(t *testing.T, m *httpMesh) (check func(bound int64, why string)) {
	t.Helper()
	stop := make(chan struct{})
	type watch struct {
		name  string
		start int64
		peak  func() int64
	}
	var watches []watch
	for _, sc := range []*meshtest.Sidecar{m.a, m.b} {
		pid, err := sc.ProxyPID()
		if err != nil {
			t.Fatal(err)
		}
		start, err := meshtest.RSS(pid)
		if err != nil {
			t.Fatal(err)
		}
		watches = append(watches, watch{sc.Pod.Name + "'s sidecar", start, memPeak(t, pid, stop)})
	}
	return func(bound int64, why string) {
		t.Helper()
		close(stop)
		for _, w := range watches {
			peak := w.peak()
			t.Logf("%s: resident memory %d MiB at start, %d MiB at peak", w.name, w.start>>20, peak>>20)
			if peak-w.start > bound {
				t.Errorf("%s grew by %d MiB, want at most %d MiB: %s", w.name, (peak-w.start)>>20, bound>>20, why)
			}
		}
	}
}

// memPeak samples the resident memory of pid every 50 ms until stop is
// closed, and returns the highest seen.
func memPeak(t *testing.T, pid int, stop <-chan struct{}) func() int64 {
	t.Helper()
	var peak atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, err := meshtest.RSS(pid); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	return func() int64 { wg.Wait(); return peak.Load() }
}

func TestHTTPLargeUpload(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	// An HTTP/1.1 client, so the body crosses both kinds of hop: HTTP/1.1
	// into a's sidecar, pooled HTTP/2 between the sidecars, HTTP/1.1 to the app.
	pc := newPodClient(t, m.a.Pod, false)
	if res, _ := pc.do(t, newRequest(t, "GET", "http://"+m.bAddr+"/echo", nil)); res.StatusCode != 200 {
		t.Fatalf("warm-up request: %d", res.StatusCode)
	}

	const size = 1 << 30
	// A sidecar streams: what it holds of a body is bounded by its copy
	// buffers and HTTP/2 flow-control windows (a few MiB at most, with the
	// garbage collector's slack). 100 MiB is an order of magnitude above
	// that and a tenth of the body: only buffering a large part of the
	// body exceeds it.
	const bound = 100 << 20
	checkRSS := watchSidecarsRSS(t, m)

	body := newPatternReader(size)
	req := newRequest(t, "POST", "http://"+m.bAddr+"/body", body)
	req.ContentLength = size
	began := time.Now()
	res, answer := pc.do(t, req)
	took := time.Since(began)
	checkRSS(bound, "it buffers bodies")

	var saw bodySaw
	if err := json.Unmarshal(answer, &saw); err != nil {
		t.Fatalf("answer %d %q: %v", res.StatusCode, answer, err)
	}
	if want := hex.EncodeToString(body.h.Sum(nil)); saw.Bytes != size || saw.SHA256 != want {
		t.Errorf("app received %d bytes, sha256 %s; want %d, %s", saw.Bytes, saw.SHA256, size, want)
	}
	t.Logf("1 GiB in %v (%.0f MiB/s)", took.Round(time.Millisecond), float64(size>>20)/took.Seconds())
}

func TestHTTPHopByHopHeaders(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	const (
		xff         = "203.0.113.7, 198.51.100.1"
		traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	)
	for _, p := range clientProtocols {
		t.Run(p.name, func(t *testing.T) {
			args := []string{p.curl, "-H", "X-Forwarded-For: " + xff, "-H", "traceparent: " + traceparent}
			if !p.h2c { // HTTP/2 has no connection-specific headers
				args = append(args, "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: for the first hop only",
					"-H", "Keep-Alive: timeout=5", "-H", "Proxy-Connection: keep-alive")
			}
			var saw appSaw
			if err := json.Unmarshal([]byte(curl(t, m.a.Pod, append(args, "http://"+m.bAddr+"/echo")...)), &saw); err != nil {
				t.Fatal(err)
			}
			for _, h := range []string{"X-Hop", "Keep-Alive", "Proxy-Connection"} {
				if v, ok := saw.Header[h]; ok {
					t.Errorf("app got hop-by-hop header %s: %q", h, v)
				}
			}
			if got := saw.Header["X-Forwarded-For"]; !slices.Equal(got, []string{xff}) {
				t.Errorf("app got X-Forwarded-For %q, want the client's %q unchanged", got, xff)
			}
			if got := saw.Header["Traceparent"]; !slices.Equal(got, []string{traceparent}) {
				t.Errorf("app got traceparent %q, want %q", got, traceparent)
			}

			// The app's response names X-Hop in Connection. Over HTTP/2
			// (an h2c client reaches the app in h2c) net/http drops the
			// Connection header, and X-Hop becomes an ordinary header;
			// Keep-Alive it sends anyway, which the proxy must not pass on.
			head, _, _ := strings.Cut(curl(t, m.a.Pod, p.curl, "-D", "-", "http://"+m.bAddr+"/hop"), "\r\n\r\n")
			for line := range strings.SplitSeq(head, "\r\n") {
				k, v, _ := strings.Cut(line, ":")
				if (strings.EqualFold(k, "X-Hop") && !p.h2c) || (strings.EqualFold(k, "Keep-Alive") && strings.Contains(v, "timeout=9")) {
					t.Errorf("client got the app's hop-by-hop response header %q", line)
				}
			}
		})
	}
}
