package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/h2spectest"
)

// h2specKnown are the h2spec cases Server does not pass, each with the
// reason it is right not to (none: it passes all 145). Anything else
// failing fails the test.
var h2specKnown = map[string]string{}

// TestServerH2Spec runs the HTTP/2 conformance suite (h2c with prior
// knowledge) against a Server answering /echo: it must pass all but the
// known cases (net/http's server passes 140 of 145).
func TestServerH2Spec(t *testing.T) {
	bin := h2spectest.Path(t)
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
	passed, total := h2spectest.Check(t, report, h2specKnown, out)
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
