package testpod

import (
	"fmt"
	"os"
	"sync"
)

// Session is a Cleaner for programs (the demo) rather than tests: Close runs
// the registered cleanups, last first; Fatalf prints, cleans up and exits
// with status 1. Create it with NewSession.
type Session struct {
	mu       sync.Mutex
	cleanups []func()
	stopSig  func()
}

var (
	_ Cleaner       = (*Session)(nil)
	_ signalHandler = (*Session)(nil)
)

// NewSession returns a Session that, on SIGINT or SIGTERM, runs its
// cleanups and exits with 128+signal. Call Close when done.
func NewSession() *Session {
	s := &Session{}
	s.stopSig = onSignal(s.Close)
	return s
}

// HandlesSignals reports that the Session cleans up on signals itself.
func (s *Session) HandlesSignals() bool { return true }

// Cleanup registers f to run on Close.
func (s *Session) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// Helper does nothing; it is there to satisfy Cleaner.
func (s *Session) Helper() {}

// Logf prints to stderr.
func (s *Session) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// Fatalf prints to stderr, runs the cleanups and exits with status 1.
func (s *Session) Fatalf(format string, args ...any) {
	s.Logf(format, args...)
	s.Close()
	os.Exit(1)
}

// Close runs the registered cleanups, last registered first. It is safe to
// call more than once.
func (s *Session) Close() {
	s.mu.Lock()
	fs := s.cleanups
	s.cleanups = nil
	stop := s.stopSig
	s.stopSig = nil
	s.mu.Unlock()
	if stop != nil {
		defer stop()
	}
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
