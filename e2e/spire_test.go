package e2e

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/spiretest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestSPIRE runs the rotation load test with identities from a real SPIRE
// server: one agent per pod (as if each were on its own node, attested by
// join token), and for each a registration entry for the sidecar's UID
// (unix:uid:1337) with SVIDs living 10 s.
func TestSPIRE(t *testing.T) {
	srv := spiretest.StartServer(t, meshtest.TrustDomain)
	srv.X509SVIDTTL = 10 * time.Second
	m := newHTTPMeshWith(t, func(a, b *testpod.Pod) ([]string, []string) {
		var flags [2][]string
		for i, p := range []*testpod.Pod{a, b} {
			agent := srv.StartAgent(t, p.Name)
			srv.Register(t, agent, spiffeid.RequireFromString(meshtest.PodID(p)), "unix:uid:1337")
			flags[i] = []string{"--spiffe-socket=" + agent.SocketPath}
		}
		return flags[0], flags[1]
	}, "", accessLogIn)

	res := meshLoad(t, m, 30*time.Second)
	t.Logf("load: %s", res)
	if res.failures() > 0 {
		t.Errorf("%s; first failures: %v", res, res.errs)
	}
	// b saw a by the ID SPIRE gave it.
	aID := meshtest.PodID(m.a.Pod)
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.Peer == aID }, 5*time.Second); !ok {
		t.Errorf("no inbound access log line with peer %s", aID)
	}
	if serials := svidSerials(m.b); len(serials) < 3 {
		t.Errorf("b's sidecar took %d SVIDs from SPIRE (%v) in 30 s of 10 s SVIDs; want at least 3", len(serials), serials)
	}
}
