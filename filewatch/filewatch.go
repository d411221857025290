// Package filewatch re-reads files and applies their contents when they
// change. It is the one behaviour of pillion's hot reloads — the proxy's
// and the injector's config files, the SVID files, the injector's serving
// certificate:
//
//   - The files are polled: read whole every interval and compared by
//     content, not by modification time, so that a Kubernetes ConfigMap or
//     Secret volume, which swaps a symlink above the files, is seen like
//     any other write. No inotify.
//   - A change is applied only once two reads in a row agree, so that a
//     file caught half-written (truncated, then written) is never applied.
//   - Files that cannot be read, and contents that are refused, are
//     reported once, not every poll; what was applied last stays in use,
//     and the files are tried again when they change.
//   - Force re-reads and applies at once, changed or not, once two reads
//     50 ms apart agree: the commands call it on SIGHUP. A Watcher installs
//     no signal handler itself.
//
// ARCHITECTURE.md ("Filters and hot reload") says where it is used.
package filewatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultInterval is how often a Watcher polls when Options.Interval is
// zero.
const DefaultInterval = time.Second

// ErrUnreadable is wrapped by the error Options.Refused is given when a
// file cannot be read.
var ErrUnreadable = errors.New("unreadable")

// Options configure a Watcher.
type Options struct {
	// Paths are the files watched, at least one. Their contents are
	// handed on in this order.
	Paths []string
	// Interval is the time between two polls of Run; zero means
	// DefaultInterval.
	Interval time.Duration
	// Current are the contents in use when watching starts, one per path
	// (as the caller read and applied them at start). Nil means none: the
	// first contents read are a change. The Watcher keeps them: the
	// caller must not modify them.
	Current [][]byte
	// Apply puts contents, one per path, to use; an error refuses them,
	// and what is in use stays. It is called with the Watcher's lock held,
	// never concurrently with itself, must not call the Watcher, and must
	// not modify contents. Required.
	Apply func(contents [][]byte) error
	// Refused is told why files were not applied: an error wrapping
	// ErrUnreadable, or Apply's error unchanged. It is told once for the
	// same files (again only when forced). Nil means no one is told.
	Refused func(err error)
	// Log gets a debug line when a change is seen and waits for the next
	// read to agree. Nil means no log.
	Log *zap.Logger
}

// A Watcher polls files and applies their contents when they change (see
// the package documentation). Its methods are safe for concurrent use.
type Watcher struct {
	opts Options

	mu      sync.Mutex
	last    snapshot  // the files last applied or refused
	pending *snapshot // a change read once, waiting for the next read to agree
}

// New returns a Watcher of opts; it reads nothing until polled. It
// panics when opts has no Paths or no Apply.
func New(opts Options) *Watcher {
	if len(opts.Paths) == 0 || opts.Apply == nil {
		panic("filewatch: New needs Paths and Apply")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	return &Watcher{opts: opts, last: snapshot{contents: opts.Current}}
}

// Run polls the files every interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Poll()
		}
	}
}

// Poll reads the files once, and applies them when they differ from what
// was last applied or refused and the read before found the same. Run
// calls it; call it directly to drive the Watcher from elsewhere.
func (w *Watcher) Poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.read()
	switch {
	case now.equal(w.last):
		w.pending = nil
	case w.pending == nil || !now.equal(*w.pending):
		w.pending = &now
		w.opts.Log.Debug("filewatch: files changed; applied when the next read agrees", zap.Strings("paths", w.opts.Paths))
	default:
		w.apply(now)
	}
}

// Force reads the files and applies them now, changed or not, once two
// reads forceSettle apart agree (a file caught being written is not
// applied: if the files still change after forceTries reads, the polls
// apply them once they settle); files that cannot be read or are refused
// are reported again.
func (w *Watcher) Force() {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.read()
	for range forceTries - 1 {
		time.Sleep(forceSettle)
		again := w.read()
		if again.equal(now) {
			w.apply(now)
			return
		}
		now = again
	}
	w.pending = &now
	w.opts.Log.Debug("filewatch: files still changing when forced; applied when two reads agree", zap.Strings("paths", w.opts.Paths))
}

// Force's reads: how many at most, and how far apart.
const (
	forceTries  = 5
	forceSettle = 50 * time.Millisecond
)

// apply applies s, or reports why not, and makes it the last seen.
func (w *Watcher) apply(s snapshot) {
	w.last, w.pending = s, nil
	err := s.err
	if err == nil {
		err = w.opts.Apply(s.contents)
	}
	if err != nil && w.opts.Refused != nil {
		w.opts.Refused(err)
	}
}

// read reads every file; a file that cannot be read makes the whole
// snapshot that error.
func (w *Watcher) read() snapshot {
	contents := make([][]byte, len(w.opts.Paths))
	for i, p := range w.opts.Paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return snapshot{err: fmt.Errorf("filewatch: %w: %w", ErrUnreadable, err)}
		}
		contents[i] = b
	}
	return snapshot{contents: contents}
}

// snapshot is what one read found: the files' contents, or the error
// that stopped it. An unreadable file is a state of its own, compared by
// its message, so that it is reported once and its end is a change.
type snapshot struct {
	contents [][]byte
	err      error
}

func (s snapshot) equal(o snapshot) bool {
	if s.err != nil || o.err != nil {
		return s.err != nil && o.err != nil && s.err.Error() == o.err.Error()
	}
	if len(s.contents) != len(o.contents) {
		return false
	}
	for i := range s.contents {
		if !bytes.Equal(s.contents[i], o.contents[i]) {
			return false
		}
	}
	return true
}
