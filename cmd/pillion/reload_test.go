package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pillionmesh/pillion/proxy"
)

func TestReloader(t *testing.T) {
	s, err := proxy.New(proxy.DefaultConfig(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pillion.yaml")
	write := func(y string) {
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	core, logs := observer.New(zap.InfoLevel)
	w := newConfigWatcher(path, nil, s, zap.New(core))
	current := func() []string {
		f, _ := s.Config()
		var names []string
		for _, sp := range f.Outbound {
			names = append(names, sp.Path)
		}
		return names
	}

	write("outbound: {filters: [{requestid: {}}]}")
	w.Poll()
	if got := strings.Join(current(), " "); got != "outbound.requestid outbound.router" {
		t.Fatalf("%s: a change was applied at its first read; it must wait for a second read to agree", got)
	}
	w.Poll()
	if got := strings.Join(current(), " "); got != "outbound.filters[0].requestid outbound.router" {
		t.Fatalf("after the first load: %s", got)
	}
	before, _ := s.Config()
	w.Poll()
	if after, _ := s.Config(); after != before {
		t.Errorf("an unchanged file was applied again")
	}
	w.Force()
	if after, _ := s.Config(); after == before {
		t.Errorf("a forced reload (SIGHUP) did not apply the file")
	}

	write("outbound: {filters: [{ratelimit: {requestsPerSecond: -1}}]}")
	kept, _ := s.Config()
	w.Poll()
	w.Poll()
	if after, _ := s.Config(); after != kept {
		t.Errorf("a config that fails to build replaced the running one")
	}
	refused := logs.FilterMessage("config refused: the running config stays").All()
	if len(refused) != 1 || !strings.Contains(refused[0].ContextMap()["error"].(string),
		"outbound.filters[0].ratelimit.requestsPerSecond: must be more than 0, got -1") {
		t.Errorf("refusal log = %+v, want one line naming the field", refused)
	}
	w.Poll() // the same bad content: not tried, not logged again
	if n := logs.FilterMessage("config refused: the running config stays").Len(); n != 1 {
		t.Errorf("the same bad file was refused %d times, want once", n)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	w.Poll()
	w.Poll()
	if after, _ := s.Config(); after != kept {
		t.Errorf("a missing file replaced the running config")
	}
	if n := logs.FilterMessage("config refused: the running config stays").Len(); n != 2 {
		t.Errorf("refusals logged = %d, want 2: the missing file once, not every poll", n)
	}

	// A reload that needs mTLS, on a proxy without an identity: refused
	// with the flags that give one, as at start.
	write("mesh: {networks: [10.0.0.0/8]}")
	w.Poll()
	w.Poll()
	refused = logs.FilterMessage("config refused: the running config stays").All()
	if msg, _ := refused[len(refused)-1].ContextMap()["error"].(string); !strings.Contains(msg,
		"mesh.networks: traffic to the mesh is mTLS and needs an identity: start the proxy with --spiffe-socket") {
		t.Errorf("refusal of a config that needs mTLS: %q, want the flags that give an identity", msg)
	}
}

// TestReloaderSkipsAHalfWrittenFile: a file caught truncated, then
// written, is never applied in its truncated state.
func TestReloaderSkipsAHalfWrittenFile(t *testing.T) {
	s, err := proxy.New(proxy.DefaultConfig(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pillion.yaml")
	full := "outbound: {filters: [{requestid: {}}]}"
	if err := os.WriteFile(path, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newConfigWatcher(path, nil, s, zap.NewNop())
	w.Force()
	filtersNow := func() int { f, _ := s.Config(); return len(f.Outbound) }
	if filtersNow() != 2 {
		t.Fatal("the forced load was not applied")
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil { // caught mid-write
		t.Fatal(err)
	}
	w.Poll()
	if err := os.WriteFile(path, []byte(full+"\n# edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	if filtersNow() != 2 {
		t.Fatalf("the truncated file was applied: %d filters", filtersNow())
	}
	w.Poll()
	if f, applied := s.Config(); len(f.Outbound) != 2 || applied.IsZero() {
		t.Errorf("the finished file was not applied")
	}
}

// TestForceOn: each signal received calls every force function once, and
// forceOn returns when its context ends.
func TestForceOn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal)
	calls := make(chan string, 4)
	done := make(chan struct{})
	go func() {
		forceOn(ctx, sig, func() { calls <- "config" }, func() { calls <- "svid" })
		close(done)
	}()
	for range 2 {
		sig <- syscall.SIGHUP
		if a, b := <-calls, <-calls; a != "config" || b != "svid" {
			t.Fatalf("forced %s, %s; want config, svid", a, b)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("forceOn did not return when its context ended")
	}
	if len(calls) != 0 {
		t.Errorf("%d calls more than signals", len(calls))
	}
}
