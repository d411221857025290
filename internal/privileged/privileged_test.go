package privileged

import (
	"fmt"
	"testing"
)

type fakeT struct{ fatal, skip string }

func (f *fakeT) Helper()           {}
func (f *fakeT) Fatal(args ...any) { f.fatal = fmt.Sprint(args...) }
func (f *fakeT) Skip(args ...any)  { f.skip = fmt.Sprint(args...) }

func TestRequire(t *testing.T) {
	for _, tt := range []struct {
		name        string
		root, ci    bool
		tools       []string
		fatal, skip string
	}{
		{"root with tools", true, false, []string{"sh"}, "", ""},
		{"laptop skips", false, false, nil, "", "this test needs root (run as root, e.g. sudo -E go test ./...)"},
		{"CI fails", false, true, nil, "this test needs root (run as root, e.g. sudo -E go test ./...) (CI=true: failing instead of skipping)", ""},
		{"missing tool in CI fails", true, true, []string{"no-such-tool-pillion"}, "this test needs the no-such-tool-pillion command (CI=true: failing instead of skipping)", ""},
		{"missing tool skips", true, false, []string{"no-such-tool-pillion"}, "", "this test needs the no-such-tool-pillion command"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var f fakeT
			require(&f, tt.root, tt.ci, tt.tools)
			if f.fatal != tt.fatal || f.skip != tt.skip {
				t.Errorf("fatal %q, skip %q; want fatal %q, skip %q", f.fatal, f.skip, tt.fatal, tt.skip)
			}
		})
	}
}
