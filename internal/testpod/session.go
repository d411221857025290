package testpod

import (
	"fmt"
	"os"
	"sync"
)

// Session is a Cleaner for programs (the demo) rather than tests: Close runs
// the registered cleanups, last first, and Fatalf prints, cleans up and
// exits with status 1.
type Session struct {
	mu       sync.Mutex
	cleanups []func()
}

var _ Cleaner = (*Session)(nil)

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
	s.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
