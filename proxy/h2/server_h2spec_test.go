package h2

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/privileged"
)

// h2specKnown are the h2spec cases Server does not pass, each with the
// reason it is right not to (none: it passes all 145). Anything else
// failing fails the test.
var h2specKnown = map[string]string{}

// h2specPath is the h2spec binary: $H2SPEC, which `make test` sets, or
// where the Makefile builds it. Missing, the test is skipped and fails
// under CI=true, as e2e's TestH2Spec does.
func h2specPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("H2SPEC")
	if p == "" {
		p = filepath.Join("..", "..", ".cache", "tools", "h2spec")
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("h2spec not found (%v): run `make h2spec`", err)
		if privileged.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

type h2specReport struct {
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

// TestServerH2Spec runs the HTTP/2 conformance suite (h2c with prior
// knowledge) against a Server answering /echo: it must pass all but the
// known cases, and at least the 140 of 145 net/http's server passes.
func TestServerH2Spec(t *testing.T) {
	bin := h2specPath(t)
	s := &Server{Handler: http.HandlerFunc(echo)}
	addr := serve(t, s, nil)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "report.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-P", "/echo", "-o", "3", "-j", report).CombinedOutput()
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no report: %v\n%s", err, out)
	}
	var r h2specReport
	if err := xml.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	total, passed := 0, 0
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			total++
			key := c.Package + ": " + c.Name
			switch {
			case c.Failure == nil && c.Error == nil && c.Skipped == nil:
				passed++
			case h2specKnown[key] != "":
				t.Logf("known: %s", key)
			default:
				t.Errorf("h2spec failed: %s", key)
			}
		}
	}
	if total < 145 || passed < 140 || passed < total-len(h2specKnown) {
		t.Errorf("h2spec: %d of %d passed, want all but the %d known ones, and at least net/http's 140\n%s",
			passed, total, len(h2specKnown), out)
	}
	if t.Failed() {
		t.Logf("%s", out)
	}
	t.Logf("h2spec: %d of %d passed", passed, total)
}

// echo answers a request with its method on a line, then its body, or
// 4 KiB when it has none (h2spec's flow-control cases need a body longer
// than the windows they set), and the body's length in a trailer.
func echo(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, r.Method+"\n")
	if r.Body == http.NoBody {
		_, _ = w.Write(bytes.Repeat([]byte("x"), 4<<10))
	}
	n, err := io.Copy(w, r.Body)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	w.Header().Set(http.TrailerPrefix+"X-Length", strconv.FormatInt(n, 10))
}
