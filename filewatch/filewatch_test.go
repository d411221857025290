package filewatch_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filewatch"
)

// recorder is a Watcher's Apply and Refused: it keeps what each was
// given, and Apply refuses contents that start with "bad".
type recorder struct {
	mu      sync.Mutex
	applied []string // each Apply's contents, joined by "|"
	refused []error
}

func (r *recorder) apply(contents [][]byte) error {
	var parts []string
	for _, c := range contents {
		parts = append(parts, string(c))
	}
	joined := strings.Join(parts, "|")
	if strings.HasPrefix(joined, "bad") {
		return errors.New("test: refused " + joined)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, joined)
	return nil
}

func (r *recorder) refuse(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused = append(r.refused, err)
}

func (r *recorder) appliedSoFar() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.applied...)
}

func newWatcher(t *testing.T, current [][]byte, paths ...string) (*filewatch.Watcher, *recorder) {
	t.Helper()
	r := &recorder{}
	w := filewatch.New(filewatch.Options{Paths: paths, Current: current, Apply: r.apply, Refused: r.refuse, Interval: 10 * time.Millisecond})
	return w, r
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTwoReadsAgree: a change is applied at the second read that finds
// it, not the first; a file caught half-written is never applied; an
// unchanged file, or the contents in use at start, is not applied again.
func TestTwoReadsAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v1")
	w, r := newWatcher(t, [][]byte{[]byte("v1")}, path)

	w.Poll()
	w.Poll()
	if len(r.applied) != 0 {
		t.Fatalf("the contents in use at start were applied again: %q", r.applied)
	}
	write(t, path, "v2")
	w.Poll()
	if len(r.applied) != 0 {
		t.Fatalf("a change was applied at its first read: %q", r.applied)
	}
	w.Poll()
	w.Poll()
	if diff := cmp.Diff([]string{"v2"}, r.applied); diff != "" {
		t.Fatalf("after two reads of v2 (-want +got):\n%s", diff)
	}

	write(t, path, "") // caught mid-write
	w.Poll()
	write(t, path, "v3")
	w.Poll()
	if diff := cmp.Diff([]string{"v2"}, r.applied); diff != "" {
		t.Fatalf("the half-written file or the first read of v3 was applied (-want +got):\n%s", diff)
	}
	w.Poll()
	if diff := cmp.Diff([]string{"v2", "v3"}, r.applied); diff != "" {
		t.Errorf("after two reads of v3 (-want +got):\n%s", diff)
	}
	if len(r.refused) != 0 {
		t.Errorf("refused: %v", r.refused)
	}
}

// TestReportedOnceThenRecovers: an unreadable file, then contents Apply
// refuses, are each reported once however often they are polled, and a
// good file after them is applied.
func TestReportedOnceThenRecovers(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	write(t, a, "a1")
	w, r := newWatcher(t, nil, a, b) // b is missing

	for range 5 {
		w.Poll()
	}
	if len(r.refused) != 1 {
		t.Fatalf("a missing file was reported %d times in 5 polls, want once: %v", len(r.refused), r.refused)
	}
	if err := r.refused[0]; !errors.Is(err, filewatch.ErrUnreadable) || !errors.Is(err, fs.ErrNotExist) ||
		err.Error() != "filewatch: unreadable: open "+b+": no such file or directory" {
		t.Errorf("error %q, want one wrapping ErrUnreadable and fs.ErrNotExist, naming the file", err)
	}

	write(t, a, "bad")
	write(t, b, "b1")
	for range 5 {
		w.Poll()
	}
	if len(r.refused) != 2 || r.refused[1].Error() != "test: refused bad|b1" {
		t.Fatalf("refused contents reported %v, want once more with Apply's error", r.refused)
	}

	write(t, a, "a2")
	w.Poll()
	w.Poll()
	if diff := cmp.Diff([]string{"a2|b1"}, r.applied); diff != "" {
		t.Errorf("after the files were mended (-want +got):\n%s", diff)
	}
	if len(r.refused) != 2 {
		t.Errorf("refused again: %v", r.refused)
	}
}

// TestForce: Force applies at once, without waiting for the next poll
// (only for a second read 50 ms later to agree), applies unchanged files
// again, and reports refused ones again.
func TestForce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v1")
	w, r := newWatcher(t, [][]byte{[]byte("v1")}, path)

	w.Force()
	if diff := cmp.Diff([]string{"v1"}, r.applied); diff != "" {
		t.Fatalf("forced with the files unchanged (-want +got):\n%s", diff)
	}
	write(t, path, "v2")
	w.Poll() // seen once: pending
	w.Force()
	w.Poll() // v2 is applied already: not again
	if diff := cmp.Diff([]string{"v1", "v2"}, r.applied); diff != "" {
		t.Fatalf("forced with a change (-want +got):\n%s", diff)
	}

	write(t, path, "bad")
	w.Poll()
	w.Poll()
	w.Poll()
	w.Force()
	if len(r.refused) != 2 {
		t.Errorf("refused %d times, want twice: at the second read and when forced: %v", len(r.refused), r.refused)
	}
	if diff := cmp.Diff([]string{"v1", "v2"}, r.applied); diff != "" {
		t.Errorf("refused contents were applied (-want +got):\n%s", diff)
	}
}

// TestForceWaitsForAWriter: forced while a writer still changes the file,
// Force applies nothing half-written; the polls apply the file once two
// reads agree.
func TestForceWaitsForAWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v1")
	w, r := newWatcher(t, [][]byte{[]byte("v1")}, path)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a writer that never settles while Force reads
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				write(t, path, "v2")
				return
			case <-time.After(5 * time.Millisecond):
				write(t, path, "partial-"+strings.Repeat("x", i))
			}
		}
	}()
	w.Force()
	close(stop)
	<-done
	for _, a := range r.appliedSoFar() {
		if strings.HasPrefix(a, "partial") {
			t.Fatalf("Force applied %q while the file was being written", a)
		}
	}
	w.Poll()
	w.Poll()
	if got := r.appliedSoFar(); len(got) == 0 || got[len(got)-1] != "v2" {
		t.Errorf("applied %v; want v2 once the writer was done", got)
	}
}

// TestRun: Run polls on its own until its context ends.
func TestRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v1")
	w, r := newWatcher(t, nil, path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	for deadline := time.Now().Add(5 * time.Second); len(r.appliedSoFar()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not applied in 5 s of 10 ms polls")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
	if diff := cmp.Diff([]string{"v1"}, r.appliedSoFar()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestNewPanicsWithoutPathsOrApply(t *testing.T) {
	for name, opts := range map[string]filewatch.Options{
		"no paths": {Apply: func([][]byte) error { return nil }},
		"no apply": {Paths: []string{"x"}},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			filewatch.New(opts)
		})
	}
}
