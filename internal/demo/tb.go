package main

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// sessionTB lets the demo, a program, use internal/kubetest, whose helpers
// take a testing.TB: besides what testpod.Cleaner has, they call Fatal,
// Errorf, Skip, TempDir and Failed. It forwards to the Session: cleanups
// run when the demo ends, a fatal error prints, cleans up and exits 1, and
// a skip (a binary `make kube` builds is missing) is fatal too, since a
// demo that skips a part shows nothing. testing.TB is embedded only for the
// interface's unexported method: it is nil, so calling a method not
// written here panics rather than doing something quietly wrong.
type sessionTB struct {
	testing.TB
	s      *testpod.Session
	failed *atomic.Bool
}

var _ testing.TB = sessionTB{}

func newSessionTB(s *testpod.Session) sessionTB {
	return sessionTB{s: s, failed: new(atomic.Bool)}
}

func (t sessionTB) Helper()                         {}
func (t sessionTB) Cleanup(f func())                { t.s.Cleanup(f) }
func (t sessionTB) Failed() bool                    { return t.failed.Load() }
func (t sessionTB) Logf(format string, args ...any) { t.s.Logf("  "+format, args...) }

func (t sessionTB) Errorf(format string, args ...any) {
	t.failed.Store(true)
	t.Logf(format, args...)
}

func (t sessionTB) Fatalf(format string, args ...any) {
	t.failed.Store(true)
	t.s.Fatalf(format, args...)
}

func (t sessionTB) Fatal(args ...any) { t.Fatalf("%s", fmt.Sprint(args...)) }
func (t sessionTB) Skip(args ...any)  { t.Fatalf("%s", fmt.Sprint(args...)) }

func (t sessionTB) TempDir() string {
	dir, err := os.MkdirTemp("", "pillion-demo-")
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
