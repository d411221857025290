package retry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
)

// TestResponseHeaders checks that the headers set before the filter ran
// reach the client, and those of a discarded attempt do not.
func TestResponseHeaders(t *testing.T) {
	f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
	w := httptest.NewRecorder()
	w.Header().Set("X-Before", "kept")
	n := 0
	f.ServeHTTP(w, request(context.Background(), "GET", nil, &filters.Info{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if got := w.Header().Get("X-Before"); got != "kept" {
			t.Errorf("attempt %d: X-Before = %q, want the one set before", n, got)
		}
		w.Header().Set("X-Attempt-"+strconv.Itoa(n), "yes")
		if n == 1 {
			w.Header().Del("X-Before")
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.Header().Set("Trailer", "X-Trailer")
		_, _ = w.Write([]byte("ok"))
		w.Header().Set("X-Trailer", "after the body")
	}))
	res := w.Result()
	want := http.Header{
		"X-Before":    {"kept"},
		"X-Attempt-2": {"yes"},
		"Trailer":     {"X-Trailer"},
	}
	if diff := cmp.Diff(want, res.Header); diff != "" {
		t.Errorf("response header (-want +got):\n%s", diff)
	}
	if got := res.Trailer.Get("X-Trailer"); got != "after the body" {
		t.Errorf("trailer X-Trailer = %q, want %q", got, "after the body")
	}
}

// TestNoResponse: an attempt that writes nothing (the router does so when
// the client went away) is final, and its headers are kept for the status
// 200 net/http then sends.
func TestNoResponse(t *testing.T) {
	f, _ := build(t, `{"attempts": 2, "on": ["5xx", "reset"]}`)
	n := 0
	w := httptest.NewRecorder()
	f.ServeHTTP(w, request(context.Background(), "GET", nil, &filters.Info{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		w.Header().Set("X-Set", "yes")
	}))
	if n != 1 || w.Header().Get("X-Set") != "yes" {
		t.Errorf("%d attempts, header %v; want 1 with X-Set", n, w.Header())
	}
}

func TestFlush(t *testing.T) {
	for _, tt := range []struct {
		name     string
		outcomes []int
		flushed  bool
	}{
		{"committed", []int{200}, true},
		{"discarded", []int{503, 200}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
			w := httptest.NewRecorder()
			n := 0
			f.ServeHTTP(w, request(context.Background(), "GET", nil, &filters.Info{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n++
				w.WriteHeader(tt.outcomes[n-1])
				if n == 1 {
					if err := http.NewResponseController(w).Flush(); err != nil {
						t.Errorf("Flush: %v", err)
					}
				}
			}))
			if w.Flushed != tt.flushed {
				t.Errorf("client flushed %v, want %v", w.Flushed, tt.flushed)
			}
			if w.Code != 200 {
				t.Errorf("status %d, want 200", w.Code)
			}
		})
	}
}

func TestFlushImpliesStatus(t *testing.T) {
	f, _ := build(t, `{"attempts": 2, "on": ["5xx"]}`)
	w := httptest.NewRecorder()
	n := 0
	f.ServeHTTP(w, request(context.Background(), "GET", nil, &filters.Info{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		w.(http.Flusher).Flush()
		w.WriteHeader(http.StatusServiceUnavailable) // superfluous
	}))
	if n != 1 || w.Code != 200 || !w.Flushed {
		t.Errorf("%d attempts, status %d, flushed %v; want 1, 200, true", n, w.Code, w.Flushed)
	}
}

// TestInformational sends 103 Early Hints over a real server in the first
// two attempts, the first one keeping its Link header for its final
// response as net/http allows: all hints reach the client, and only the
// last attempt's final response does.
func TestInformational(t *testing.T) {
	f, _ := build(t, `{"attempts": 3, "on": ["5xx"]}`)
	rt := &router{outcomes: []outcome{unavailable, unavailable, ok}}
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := &filters.Info{}
		f.ServeHTTP(w, r.WithContext(filters.NewContext(r.Context(), info)), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n++
			if n <= 2 {
				w.Header().Set("Link", "</style.css>; rel=preload; as=style")
				w.WriteHeader(http.StatusEarlyHints)
			}
			if n == 2 {
				w.Header().Del("Link") // as httputil.ReverseProxy does
			}
			rt.ServeHTTP(w, r)
		}))
	}))
	defer srv.Close()
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
		return nil
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	wantHints := []string{"103 </style.css>; rel=preload; as=style", "103 </style.css>; rel=preload; as=style"}
	if diff := cmp.Diff(wantHints, hints); diff != "" {
		t.Errorf("1xx responses (-want +got):\n%s", diff)
	}
	if res.StatusCode != 200 || string(body) != "attempt 3\n" || res.Header.Get("Link") != "" {
		t.Errorf("got %d %q with Link %q; want 200 %q without", res.StatusCode, body, res.Header.Get("Link"), "attempt 3\n")
	}
}
