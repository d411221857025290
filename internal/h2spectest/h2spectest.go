// Package h2spectest runs the tests' side of h2spec, the HTTP/2
// conformance suite: where its binary is, and what its JUnit report says.
// proxy/h2 runs it against pillion's HTTP/2 server alone, e2e against the
// sidecar in a pod.
package h2spectest

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
)

// Cases is how many cases h2spec's generic and http2 suites hold: a run
// that reports fewer did not reach its server.
const Cases = 145

// Path is the h2spec binary: $H2SPEC, which `make test` sets, or where
// the Makefile builds it. Missing, the test is skipped (`make unit` on a
// fresh clone) and fails under CI=true, as the root-only tests do.
func Path(t testing.TB) string {
	t.Helper()
	p := os.Getenv("H2SPEC")
	if p == "" {
		root, err := meshtest.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, ".cache", "tools", "h2spec")
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("h2spec not found (%v): run `make test`, which builds it, or `make h2spec`", err)
		if privileged.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Check reads the JUnit report h2spec wrote (-j) and fails t for every case
// that did not pass and is not in known (by "package: name", with the
// reason it is right not to pass), and when fewer than Cases ran. out is
// h2spec's output, shown on failure. It returns how many passed of how
// many.
func Check(t testing.TB, report string, known map[string]string, out []byte) (passed, total int) {
	t.Helper()
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no h2spec report: %v\n%s", err, out)
	}
	var r struct {
		Suites []struct {
			Cases []struct {
				Package string    `xml:"package,attr"`
				Name    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			total++
			key := c.Package + ": " + c.Name
			switch {
			case c.Failure == nil && c.Error == nil && c.Skipped == nil:
				passed++
			case known[key] != "":
				t.Logf("known: %s", key)
			default:
				t.Errorf("h2spec failed: %s", key)
			}
		}
	}
	// A run that could not reach the server must not pass by having
	// nothing to fail.
	if total < Cases || passed < total-len(known) {
		t.Errorf("h2spec: %d of %d passed, want all but the %d known ones\n%s", passed, total, len(known), out)
	}
	return passed, total
}
