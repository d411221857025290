package spiretest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/pillionmesh/pillion/internal/privileged"
)

// TestAgentsHandOutTheirOwnIDs registers this process's UID under two
// agents of one server with two different IDs, and checks with go-spiffe's
// Workload API client that each agent's socket hands out its own ID, with
// the requested lifetime, signed by that server; then that UID 1337, the
// proxy's user, reaches both sockets and gets its own entry from each.
func TestAgentsHandOutTheirOwnIDs(t *testing.T) {
	privileged.Require(t)
	Dir(t) // skip before timing anything if SPIRE is not built

	begin := time.Now()
	srv := StartServer(t, "pillion.test")
	serverUp := time.Since(begin)
	a := srv.StartAgent(t, "a")
	b := srv.StartAgent(t, "b")
	agentsUp := time.Since(begin) - serverUp
	if a.ID == b.ID || a.SocketPath == b.SocketPath {
		t.Fatalf("agents share an ID or a socket: %s at %s, %s at %s", a.ID, a.SocketPath, b.ID, b.SocketPath)
	}

	self := "unix:uid:" + strconv.Itoa(os.Getuid())
	want := map[*Agent]spiffeid.ID{
		a: spiffeid.RequireFromPath(srv.TrustDomain, "/ns/pod-a/sa/app"),
		b: spiffeid.RequireFromPath(srv.TrustDomain, "/ns/pod-b/sa/app"),
	}
	wantProxy := map[*Agent]spiffeid.ID{
		a: spiffeid.RequireFromPath(srv.TrustDomain, "/ns/pod-a/sa/proxy"),
		b: spiffeid.RequireFromPath(srv.TrustDomain, "/ns/pod-b/sa/proxy"),
	}
	registered := time.Now()
	for _, ag := range []*Agent{a, b} {
		srv.Register(t, ag, want[ag], self)
		srv.Register(t, ag, wantProxy[ag], "unix:uid:"+strconv.Itoa(proxyUID))
	}

	serverBundle, err := x509bundle.Load(srv.TrustDomain, srv.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, ag := range []*Agent{a, b} {
		svid := fetchSVID(t, ag)
		if svid.ID != want[ag] {
			t.Fatalf("agent %s handed out %s, want %s", ag.Name, svid.ID, want[ag])
		}
		leaf := svid.Certificates[0]
		if life := time.Until(leaf.NotAfter); life > DefaultX509SVIDTTL || life < DefaultX509SVIDTTL/2 {
			t.Errorf("agent %s: SVID expires in %v, want at most %v and over half of it", ag.Name, life, DefaultX509SVIDTTL)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		bundles, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(ag.Addr()))
		cancel()
		if err != nil {
			t.Fatalf("agent %s: fetch bundles: %v", ag.Name, err)
		}
		got, _, err := x509svid.Verify(svid.Certificates, bundles)
		if err != nil {
			t.Fatalf("agent %s: SVID does not verify against the agent's bundle: %v", ag.Name, err)
		}
		if got != want[ag] {
			t.Errorf("agent %s: verified ID %s, want %s", ag.Name, got, want[ag])
		}
		bundle, err := bundles.GetX509BundleForTrustDomain(srv.TrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		if !bundle.Equal(serverBundle) {
			t.Errorf("agent %s: bundle has %d authorities, not the %d of `spire-server bundle show`", ag.Name, len(bundle.X509Authorities()), len(serverBundle.X509Authorities()))
		}
	}

	// The proxy's user reaches each socket and gets its own entry there.
	for _, ag := range []*Agent{a, b} {
		if got := fetchIDAs(t, ag, proxyUID); got != wantProxy[ag].String() {
			t.Errorf("UID %d: agent %s handed out %s, want %s", proxyUID, ag.Name, got, wantProxy[ag])
		}
	}
	t.Logf("server healthy after %v, two agents healthy %v later, all four SVIDs %v after registering",
		serverUp.Round(time.Millisecond), agentsUp.Round(time.Millisecond), time.Since(registered).Round(time.Millisecond))
}

// fetchSVID asks ag's socket for this process's X509-SVIDs until it gets
// some, for up to 30 seconds: an agent serves a new entry only after its next
// sync with the server. It fails t unless there is exactly one.
func fetchSVID(t *testing.T, ag *Agent) *x509svid.SVID {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(ag.Addr()))
		cancel()
		switch {
		case err == nil && len(svids) == 1:
			return svids[0]
		case err == nil:
			t.Fatalf("agent %s handed out %d SVIDs, want 1", ag.Name, len(svids))
		case time.Now().After(deadline):
			t.Fatalf("agent %s: no SVID after 30s: %v\n%s", ag.Name, err, ag.proc.report())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proxyUID is the proxy's user, whose sidecars ask the agents for their
// identity.
const proxyUID = 1337

// fetchIDAs runs `spire-agent api fetch x509` against ag's socket as uid
// (and the same gid, no supplementary groups), retrying for up to 30
// seconds, and returns the SPIFFE ID it printed.
func fetchIDAs(t *testing.T, ag *Agent, uid uint32) string {
	t.Helper()
	bin := filepath.Join(Dir(t), "spire-agent")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, bin, "api", "fetch", "x509", "-socketPath", ag.SocketPath)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		cancel()
		var ids []string
		for line := range strings.Lines(string(out)) {
			if id, ok := strings.CutPrefix(line, "SPIFFE ID:"); ok {
				ids = append(ids, strings.TrimSpace(id))
			}
		}
		switch {
		case err == nil && len(ids) == 1:
			return ids[0]
		case err == nil:
			t.Fatalf("UID %d: agent %s handed out %d SVIDs, want 1:\n%s", uid, ag.Name, len(ids), out)
		case strings.Contains(string(out), "permission denied"):
			t.Fatalf("UID %d cannot reach agent %s's socket %s:\n%s", uid, ag.Name, ag.SocketPath, out)
		case time.Now().After(deadline):
			t.Fatalf("UID %d: agent %s: no SVID after 30s: %v\n%s\n%s", uid, ag.Name, err, out, ag.proc.report())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
