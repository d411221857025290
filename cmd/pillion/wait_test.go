package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestWait: it returns once the endpoint answers 200, and fails after its
// time-out with the last reason.
func TestWait(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "no identity: waiting", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	code, stdout, stderr := runCmd("wait", "--url="+srv.URL, "--interval=10ms", "--timeout=5s")
	if code != 0 || !strings.Contains(stdout, "ready") || calls.Load() != 3 {
		t.Errorf("exit %d after %d calls, stdout %q, stderr %q; want 0 after 3", code, calls.Load(), stdout, stderr)
	}

	never := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "DRAINING", http.StatusServiceUnavailable)
	}))
	defer never.Close()
	code, _, stderr = runCmd("wait", "--url="+never.URL, "--interval=10ms", "--timeout=200ms")
	if code != 1 || !strings.Contains(stderr, "not ready after 200ms") || !strings.Contains(stderr, "503 Service Unavailable: DRAINING") {
		t.Errorf("exit %d, stderr %q; want 1 and the last reason", code, stderr)
	}
	code, _, stderr = runCmd("wait", "--timeout=0s")
	if code != 2 || !strings.Contains(stderr, "--timeout: 0s: must be positive") {
		t.Errorf("exit %d, stderr %q; want 2 naming --timeout", code, stderr)
	}
}
