// Package privileged decides what a test does when it needs root or a system
// tool: on a developer's laptop it skips with the reason, under CI=true it
// fails, so a missing privilege or tool can never hide a test in CI.
package privileged

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// InCI reports whether the tests run in CI (the environment variable CI is
// "true" or "1").
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// Require stops t unless the process is root and every named tool is on
// PATH. It skips the test with the reason outside CI and fails it in CI.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	require(t, os.Geteuid() == 0, InCI(), tools)
}

// stopper is the part of testing.TB that require uses.
type stopper interface {
	Helper()
	Fatal(args ...any)
	Skip(args ...any)
}

func require(t stopper, root, ci bool, tools []string) {
	t.Helper()
	var missing []string
	if !root {
		missing = append(missing, "root (run as root, e.g. sudo -E go test ./...)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, "the "+tool+" command")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "this test needs " + strings.Join(missing, " and ")
	if ci {
		t.Fatal(msg + " (CI=true: failing instead of skipping)")
		return
	}
	t.Skip(msg)
}
