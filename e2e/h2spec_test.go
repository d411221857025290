package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/h2spectest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// h2specKnown are the h2spec cases the sidecar does not pass, each with the
// reason it is right not to. Anything else failing fails the test.
var h2specKnown = map[string]string{
	"http2/3.5: Sends invalid connection preface": "a connection that does not start with the HTTP/2 preface is not " +
		"HTTP/2 to a transparent proxy: it is forwarded as opaque TCP, and the application answers it",
}

// TestH2Spec runs the HTTP/2 conformance suite against both of the
// sidecar's HTTP/2 servers: the outbound one (h2spec in pod a, captured)
// and the inbound one (h2spec as the proxy's UID in a, not captured, so it
// reaches b's sidecar directly).
func TestH2Spec(t *testing.T) {
	bin := h2spectest.Path(t)
	m := newHTTPMesh(t, "", "")
	for _, tc := range []struct {
		name string
		user testpod.User
	}{{"outbound", testpod.Root}, {"inbound", testpod.ProxyUser}} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "h2spec-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			report := filepath.Join(dir, "report.xml")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			// /body reads the whole request before it answers: /echo answers
			// at once, so its response could reach h2spec before the sidecar
			// read the request's malformed trailers (8.1.2.1), and the reset
			// that follows came after an answer h2spec did not expect.
			out, _ := m.a.Pod.Command(ctx, tc.user, bin, "-h", m.bIP, "-p", "8080", "-P", "/body", "-o", "3", "-j", report).CombinedOutput()
			passed, total := h2spectest.Check(t, report, h2specKnown, out)
			t.Logf("h2spec %s: %d of %d passed", tc.name, passed, total)
		})
	}
}
