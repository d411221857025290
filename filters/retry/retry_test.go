package retry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// outcome is what the fake router makes of one attempt: an upstream
// failure, answered the way the real router answers it, or the upstream's
// status.
type outcome struct {
	failure upstream.Kind
	status  int
}

var (
	connectFailure = outcome{failure: upstream.ConnectFailure}
	refused        = outcome{failure: upstream.Refused}
	reset          = outcome{failure: upstream.Reset}
	protocolError  = outcome{failure: upstream.ProtocolError}
	ok             = outcome{status: http.StatusOK}
	unavailable    = outcome{status: http.StatusServiceUnavailable} // from the application
)

// call is what the fake router saw of one attempt.
type call struct {
	read     bool // the body was read (to its end)
	body     []byte
	deadline time.Time // zero: none
}

// router simulates the terminal router: it counts the attempt, reads the
// body (unless the attempt is a connect failure, which sends nothing), and
// then answers as outcomes[attempt-1] says (the last one for any attempt
// beyond). An upstream response carries X-Attempt: n, an X-Attempt-n
// header, and the body "attempt n".
type router struct {
	outcomes []outcome
	mu       sync.Mutex
	calls    []call
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info := filters.FromContext(r.Context())
	n := info.StartAttempt()
	o := rt.outcomes[min(n, len(rt.outcomes))-1]
	var c call
	if o.failure != upstream.ConnectFailure {
		var err error
		if c.body, err = io.ReadAll(r.Body); err != nil {
			panic(err)
		}
		c.read = true
	}
	c.deadline, _ = r.Context().Deadline()
	rt.mu.Lock()
	rt.calls = append(rt.calls, c)
	rt.mu.Unlock()
	fail(w, r, o.failure)
	if o.failure != 0 {
		return
	}
	info.SetUpstreamTime(time.Millisecond)
	w.Header().Set("X-Attempt", strconv.Itoa(n))
	w.Header().Set("X-Attempt-"+strconv.Itoa(n), "yes")
	w.WriteHeader(o.status)
	fmt.Fprintf(w, "attempt %d\n", n)
}

// fail answers r the way the router answers an upstream failure of kind k;
// it does nothing when k is zero.
func fail(w http.ResponseWriter, r *http.Request, k upstream.Kind) {
	info := filters.FromContext(r.Context())
	switch k {
	case 0:
		return
	case upstream.ConnectFailure, upstream.Refused:
		info.SetUpstreamFailure(k)
		filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error")
	case upstream.Reset:
		info.SetUpstreamFailure(k)
		filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamReset, "upstream reset")
	case upstream.ProtocolError:
		info.SetUpstreamFailure(k)
		filters.Reply(w, r, http.StatusBadGateway, filters.UpstreamProtocolError, "upstream protocol error")
	}
}

// build returns the filter of js with a sleep that records the delays and
// does not wait.
func build(t *testing.T, js string) (*Retry, *[]time.Duration) {
	t.Helper()
	c, err := decode(js)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Build(env())
	if err != nil {
		t.Fatal(err)
	}
	rf := f.(*Retry)
	var delays []time.Duration
	rf.sleep = func(ctx context.Context, d time.Duration) error {
		delays = append(delays, d)
		return ctx.Err()
	}
	return rf, &delays
}

// request returns a request with an Info in its context.
func request(ctx context.Context, method string, body io.Reader, info *filters.Info) *http.Request {
	r := httptest.NewRequestWithContext(filters.NewContext(ctx, info), method, "http://b/x", body)
	if body == nil {
		r.Body = http.NoBody
	}
	return r
}

// result is what the client got and the proxy recorded.
type result struct {
	Attempts int
	Code     int
	Body     string
	Attempt  string // the X-Attempt header
	Flags    string
}

func TestRetry(t *testing.T) {
	const (
		fiveXX       = `{"attempts": 2, "on": ["5xx"]}`
		connectOnly  = `{"attempts": 2, "on": ["connect-failure"]}`
		upstreamFail = `{"attempts": 3, "on": ["connect-failure", "refused-stream", "reset"]}`
	)
	small := strings.Repeat("b", 1000)
	for _, tt := range []struct {
		name     string
		config   string
		method   string
		body     string // "" means none
		chunked  bool   // the body's length is unknown
		upgrade  string
		outcomes []outcome
		want     result
	}{
		{"first attempt answers", fiveXX, "GET", "", false, "", []outcome{ok},
			result{1, 200, "attempt 1\n", "1", "-"}},
		{"503 then 200", fiveXX, "GET", "", false, "", []outcome{unavailable, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"retry limit", `{"attempts": 3, "on": ["5xx"]}`, "GET", "", false, "", []outcome{unavailable},
			result{3, 503, "attempt 3\n", "3", "URX"}},
		{"connect failure then 200", connectOnly, "GET", "", false, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"connect failure every time", connectOnly, "GET", "", false, "", []outcome{connectFailure},
			result{2, 503, "upstream connect error\n", "", "UF,URX"}},
		{"refused stream", upstreamFail, "GET", "", false, "", []outcome{refused, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"reset", upstreamFail, "GET", "", false, "", []outcome{reset, reset, ok},
			result{3, 200, "attempt 3\n", "3", "-"}},
		{"application 503 is not an upstream failure", upstreamFail, "GET", "", false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"protocol error is a gateway error", `{"attempts": 2, "on": ["gateway-error"]}`, "GET", "", false, "", []outcome{protocolError, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"500 is not a gateway error", `{"attempts": 2, "on": ["gateway-error"]}`, "GET", "", false, "", []outcome{{status: 500}, ok},
			result{1, 500, "attempt 1\n", "1", "-"}},
		{"status code", `{"attempts": 2, "on": ["409"]}`, "GET", "", false, "", []outcome{{status: 409}, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"other status code", `{"attempts": 2, "on": ["409"]}`, "GET", "", false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"one attempt: no retry, no URX", `{"attempts": 1, "on": ["5xx"]}`, "GET", "", false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"upgrade is never retried", fiveXX, "GET", "", false, "websocket", []outcome{connectFailure, ok},
			result{1, 503, "upstream connect error\n", "", "UF"}},
		{"PUT is idempotent", fiveXX, "PUT", small, false, "", []outcome{unavailable, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"DELETE is idempotent", fiveXX, "DELETE", "", false, "", []outcome{reset, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"POST not retried on a 503", fiveXX, "POST", small, false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"POST not retried on a reset", upstreamFail, "POST", small, false, "", []outcome{reset, ok},
			result{1, 503, "upstream reset\n", "", "UC"}},
		{"POST not retried when only reset is named", `{"attempts": 2, "on": ["reset"]}`, "POST", small, false, "", []outcome{connectFailure, ok},
			result{1, 503, "upstream connect error\n", "", "UF"}},
		{"POST retried on a connect failure", connectOnly, "POST", small, false, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"POST retried on a connect failure under 5xx", fiveXX, "POST", small, false, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"POST retried on a connect failure under 503", `{"attempts": 2, "on": ["503"]}`, "POST", small, false, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"POST retried on a refused stream", upstreamFail, "POST", small, false, "", []outcome{refused, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"POST of unknown length", connectOnly, "POST", small, true, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"PATCH is not idempotent", fiveXX, "PATCH", small, false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"empty body", fiveXX, "PUT", "", true, "", []outcome{unavailable, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"64 KiB body read, then replayed", fiveXX, "PUT", strings.Repeat("x", MaxReplayBody), false, "", []outcome{unavailable, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"64 KiB body of unknown length read, then replayed twice", `{"attempts": 3, "on": ["5xx"]}`, "PUT", strings.Repeat("x", MaxReplayBody), true, "", []outcome{unavailable, unavailable, ok},
			result{3, 200, "attempt 3\n", "3", "-"}},
		{"70 KiB body read is sent once", fiveXX, "PUT", strings.Repeat("y", 70<<10), false, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"70 KiB body of unknown length read is sent once", fiveXX, "PUT", strings.Repeat("y", 70<<10), true, "", []outcome{unavailable, ok},
			result{1, 503, "attempt 1\n", "1", "-"}},
		{"one byte over is sent once", fiveXX, "PUT", strings.Repeat("z", MaxReplayBody+1), true, "", []outcome{reset, ok},
			result{1, 503, "upstream reset\n", "", "UC"}},
		{"70 KiB POST refused after it was read is sent once", upstreamFail, "POST", strings.Repeat("y", 70<<10), false, "", []outcome{refused, ok},
			result{1, 503, "upstream connect error\n", "", "UF"}},
		{"70 KiB POST is retried on a connect failure, which read none of it", connectOnly, "POST", strings.Repeat("y", 70<<10), false, "", []outcome{connectFailure, ok},
			result{2, 200, "attempt 2\n", "2", "-"}},
		{"70 KiB POST connect failure every time", `{"attempts": 3, "on": ["connect-failure"]}`, "POST", strings.Repeat("y", 70<<10), false, "", []outcome{connectFailure},
			result{3, 503, "upstream connect error\n", "", "UF,URX"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, delays := build(t, tt.config)
			info := &filters.Info{Upgrade: tt.upgrade}
			var body *countingReader
			r := request(context.Background(), tt.method, nil, info)
			if tt.body != "" || tt.chunked {
				body = &countingReader{r: strings.NewReader(tt.body)}
				r = request(context.Background(), tt.method, body, info)
				r.ContentLength = int64(len(tt.body))
				if tt.chunked {
					r.ContentLength = -1
				}
			}
			rt := &router{outcomes: tt.outcomes}
			var readFirst int64 = -1 // body bytes read before the first attempt
			w := httptest.NewRecorder()
			f.ServeHTTP(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if readFirst < 0 && body != nil {
					readFirst = body.n
				}
				rt.ServeHTTP(w, r)
			}))
			got := result{info.Attempts(), w.Code, w.Body.String(), w.Header().Get("X-Attempt"), info.Flags().String()}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			for i, c := range rt.calls {
				if c.read && string(c.body) != tt.body {
					t.Errorf("attempt %d: upstream got %d body bytes, want %d intact", i+1, len(c.body), len(tt.body))
				}
			}
			if readFirst > 0 {
				t.Errorf("%d body bytes read before the first attempt, which should stream it", readFirst)
			}
			for k := range w.Header() {
				if strings.HasPrefix(k, "X-Attempt-") && k != "X-Attempt-"+got.Attempt {
					t.Errorf("the client got header %s of a discarded attempt", k)
				}
			}
			if len(*delays) != got.Attempts-1 {
				t.Errorf("waited %d times between %d attempts", len(*delays), got.Attempts)
			}
		})
	}
}

// failing fails every read with err.
type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// TestBodyReadError sends a body whose reading fails: the attempt gets the
// bytes read and then the error, and is not retried.
func TestBodyReadError(t *testing.T) {
	f, _ := build(t, `{"attempts": 2, "on": ["connect-failure"]}`)
	broken := fmt.Errorf("client went away")
	r := request(context.Background(), "POST", io.MultiReader(strings.NewReader("partial"), failing{broken}), &filters.Info{})
	r.ContentLength = 100
	var attempts int
	var got []byte
	var gotErr error
	f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts++
		got, gotErr = io.ReadAll(r.Body)
		fail(w, r, upstream.ConnectFailure)
	}))
	if attempts != 1 || string(got) != "partial" || gotErr != broken {
		t.Errorf("%d attempts read %q, %v; want 1 reading %q, %v", attempts, got, gotErr, "partial", broken)
	}
}

// TestEarlierFlags checks that the flags recorded before the filter ran
// survive the retries, and those of a discarded attempt do not.
func TestEarlierFlags(t *testing.T) {
	f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
	info := &filters.Info{}
	info.AddFlags(filters.FaultDelay)
	rt := &router{outcomes: []outcome{connectFailure, reset, ok}}
	w := httptest.NewRecorder()
	f.ServeHTTP(w, request(context.Background(), "GET", nil, info), rt)
	if got := info.Flags().String(); w.Code != 200 || got != "DI" {
		t.Errorf("status %d, flags %s; want 200, DI", w.Code, got)
	}
	if got := info.UpstreamFailure(); got != 0 {
		t.Errorf("upstream failure %v of a discarded attempt is still recorded", got)
	}
}

// TestAttemptsSeeTheRequestAsItCame runs a filter between the retry and the
// router that adds a header and rewrites the path: every attempt starts
// from the request as the retry filter got it.
func TestAttemptsSeeTheRequestAsItCame(t *testing.T) {
	f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
	var seen [][]string
	var paths []string
	n := 0
	f.ServeHTTP(httptest.NewRecorder(), request(context.Background(), "GET", nil, &filters.Info{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Add("X-Hop", "added")
		r.URL.Path += "/more"
		seen = append(seen, r.Header.Values("X-Hop"))
		paths = append(paths, r.URL.Path)
		n++
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	wantSeen := [][]string{{"added"}, {"added"}, {"added"}}
	wantPaths := []string{"/x/more", "/x/more", "/x/more"}
	if diff := cmp.Diff(wantSeen, seen); diff != "" {
		t.Errorf("X-Hop per attempt (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantPaths, paths); diff != "" {
		t.Errorf("path per attempt (-want +got):\n%s", diff)
	}
}

func TestPerTryTimeout(t *testing.T) {
	f, _ := build(t, `{"attempts": 3, "on": ["gateway-error"], "perTryTimeout": "10ms"}`)
	info := &filters.Info{}
	outer, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	var deadlines []time.Time
	var contexts []context.Context
	w := httptest.NewRecorder()
	start := time.Now()
	f.ServeHTTP(w, request(outer, "GET", nil, info), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := info.StartAttempt()
		d, _ := r.Context().Deadline()
		deadlines = append(deadlines, d)
		contexts = append(contexts, r.Context())
		if n == 1 { // the upstream does not answer in time
			<-r.Context().Done()
			filters.Reply(w, r, http.StatusGatewayTimeout, filters.UpstreamTimeout, "upstream request timeout")
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	if info.Attempts() != 2 || w.Code != 200 || info.Flags() != 0 {
		t.Fatalf("%d attempts, status %d, flags %s; want 2, 200, -", info.Attempts(), w.Code, info.Flags())
	}
	for i, d := range deadlines {
		if d.Before(start.Add(10*time.Millisecond)) || d.After(time.Now().Add(10*time.Millisecond)) {
			t.Errorf("attempt %d: deadline %v after the start, want 10ms after its own start", i+1, d.Sub(start))
		}
		if contexts[i].Err() == nil {
			t.Errorf("attempt %d: context still live", i+1)
		}
	}
	if outer.Err() != nil {
		t.Error("the request's own context ended")
	}
}

// TestRequestDeadline: once the request's own deadline has passed, the
// router's 504 is final, without URX.
func TestRequestDeadline(t *testing.T) {
	f, delays := build(t, `{"attempts": 3, "on": ["5xx"], "perTryTimeout": "1h"}`)
	info := &filters.Info{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	w := httptest.NewRecorder()
	var deadline time.Time
	f.ServeHTTP(w, request(ctx, "GET", nil, info), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info.StartAttempt()
		deadline, _ = r.Context().Deadline()
		<-r.Context().Done()
		filters.Reply(w, r, http.StatusGatewayTimeout, filters.UpstreamTimeout, "upstream request timeout")
	}))
	want, _ := ctx.Deadline()
	if !deadline.Equal(want) {
		t.Errorf("attempt deadline %v, want the request's %v", deadline, want)
	}
	if info.Attempts() != 1 || w.Code != 504 || info.Flags().String() != "UT" || len(*delays) != 0 {
		t.Errorf("%d attempts, %d waits, status %d, flags %s; want 1, 0, 504, UT", info.Attempts(), len(*delays), w.Code, info.Flags())
	}
}

func TestBackoff(t *testing.T) {
	f, delays := build(t, `{"attempts": 6, "on": ["5xx"], "backoff": "10ms"}`)
	var ceilings []time.Duration
	f.rand = func(n int64) int64 {
		ceilings = append(ceilings, time.Duration(n))
		return n - 1
	}
	f.ServeHTTP(httptest.NewRecorder(), request(context.Background(), "GET", nil, &filters.Info{}), &router{outcomes: []outcome{unavailable}})
	ms := time.Millisecond
	if diff := cmp.Diff([]time.Duration{10 * ms, 30 * ms, 70 * ms, 100 * ms, 100 * ms}, ceilings); diff != "" {
		t.Errorf("backoff ceilings (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]time.Duration{10*ms - 1, 30*ms - 1, 70*ms - 1, 100*ms - 1, 100*ms - 1}, *delays); diff != "" {
		t.Errorf("waits (-want +got):\n%s", diff)
	}
}

// TestBackoffInterrupted: when the request's context ends during the
// wait, the filter answers 504 UT for a deadline, and aborts the response
// for a client gone.
func TestBackoffInterrupted(t *testing.T) {
	for _, tt := range []struct {
		err   error
		code  int // 0: aborted, no response
		body  string
		flags string
	}{
		{context.DeadlineExceeded, 504, "request timeout while waiting to retry\n", "UF,UT"},
		{context.Canceled, 0, "", "UF,DC"},
	} {
		t.Run(tt.err.Error(), func(t *testing.T) {
			f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
			f.sleep = func(context.Context, time.Duration) error { return tt.err }
			info := &filters.Info{}
			w := httptest.NewRecorder()
			aborted := func() (aborted bool) {
				defer func() {
					if p := recover(); p != nil {
						if p != http.ErrAbortHandler {
							panic(p)
						}
						aborted = true
					}
				}()
				f.ServeHTTP(w, request(context.Background(), "GET", nil, info), &router{outcomes: []outcome{connectFailure, ok}})
				return false
			}()
			code := w.Code
			if aborted {
				code = 0
			}
			got := result{info.Attempts(), code, w.Body.String(), "", info.Flags().String()}
			if diff := cmp.Diff(result{1, tt.code, tt.body, "", tt.flags}, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSleep(t *testing.T) {
	if err := sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("sleep: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := sleep(ctx, time.Hour); err != context.Canceled {
		t.Errorf("sleep with an ended context: %v, want %v", err, context.Canceled)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("sleep with an ended context took %v", d)
	}
}

// trailerBody is a request body whose trailer values appear when it ends,
// as net/http's server fills them in.
type trailerBody struct {
	r    io.Reader
	req  *http.Request
	done bool
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.req.Trailer.Set("X-Sum", "abc")
	}
	return n, err
}
func (b *trailerBody) Close() error { return nil }

func TestRetriedRequestCarriesTrailers(t *testing.T) {
	cfg := &Config{Attempts: 2, On: []string{"connect-failure"}}
	f, err := cfg.Build(filters.Env{Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "http://b/", nil)
	r.Trailer = http.Header{"X-Sum": nil}
	r.Body = &trailerBody{r: strings.NewReader("payload"), req: r}
	r.ContentLength = -1
	r = r.WithContext(filters.NewContext(r.Context(), &filters.Info{}))
	var got string
	f.ServeHTTP(httptest.NewRecorder(), r, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		got = req.Trailer.Get("X-Sum")
	}))
	if got != "abc" {
		t.Errorf("trailer the upstream saw = %q, want %q", got, "abc")
	}
}
