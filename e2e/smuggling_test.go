package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/smuggling"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestSmuggling runs the request-smuggling corpus (internal/smuggling, the
// table the proxy's in-process test runs too) from pod a through both
// sidecars (a's outbound, mTLS, b's inbound) to a raw TCP application in
// pod b that records the bytes it gets on each connection, and from pod c,
// which has no sidecar, as a plaintext caller to b's sidecar. Each case is
// refused (4xx, or 501 for a transfer coding net/http does not know; the
// connection closed; no complete request at the application), or the
// application gets exactly one request Go's strict parser reads whole, with
// nothing left over, then the client's follow-up on the same connection;
// or, for request lines detection does not take for HTTP/1.x, the client's
// bytes unchanged. Forged pillion- headers never reach it.
func TestSmuggling(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	app := &smuggling.App{}
	l, err := m.b.Pod.Listen("tcp", ":8081")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, l, app.Serve)
	podC := m.node.AddPod(t, "c")
	addr := hostPort(m.b.Pod.IPv4, 8081)
	callers := []struct {
		name string
		pod  *testpod.Pod
	}{{"through both sidecars", m.a.Pod}, {"plaintext caller", podC}}
	for _, tc := range smuggling.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			for _, from := range callers {
				dial := func() (net.Conn, error) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					return from.pod.Dial(ctx, "tcp", addr)
				}
				t.Logf("%s: %s", from.name, smuggling.Run(t, dial, app, tc))
			}
		})
	}
}
