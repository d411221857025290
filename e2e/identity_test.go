package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestSidecarWaitsForItsIdentity: b's sidecar starts before its Workload
// API socket exists. It says it is not ready and why, refuses plaintext
// (STRICT) and cannot be reached in mTLS; once the socket appears it gets
// its SVID on its own, becomes ready and serves a.
func TestSidecarWaitsForItsIdentity(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv", "curl")
	node := testpod.NewNode(t)
	podA, podB, podC := node.AddPod(t, "a"), node.AddPod(t, "b"), node.AddPod(t, "c")
	serveApp(t, podB, ":8080")
	iss := meshtest.StartIssuer(t, pillionBin, time.Hour, podA, podB)
	later := filepath.Join(filepath.Dir(iss.Socket(podB)), "b-later.sock")
	strict := meshtest.WriteConfig(t, "mesh: {networks: "+meshtest.MeshNetworks+", mode: STRICT}\n")

	a := meshtest.Inject(t, pillionBin, podA, nil, []string{"--config=" + strict, iss.ProxyArg(podA)})
	b := meshtest.InjectUntil(t, pillionBin, podB, nil, []string{"--config=" + strict, "--spiffe-socket=" + later},
		"not ready: waiting for an identity")
	l, _ := b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "not ready: waiting for an identity" }, 0)
	if !strings.Contains(l.Error, later) {
		t.Errorf("the not-ready line does not say which socket: %+v", l)
	}
	bURL := "http://" + hostPort(podB.IPv4, 8080) + "/fixed"
	if out, err := podC.Command(context.Background(), testpod.Root, "curl", "-sS", "--max-time", "5", bURL).CombinedOutput(); err == nil {
		t.Errorf("plaintext answered while b had no identity: %s", out)
	}
	if got := curl(t, podA, "-o", "/dev/null", "-w", "%{http_code}", bURL); got != "503" {
		t.Errorf("a's request to b without an SVID: %s, want 503", got)
	}

	// pillion wait, the application's postStart hook, gives up saying why.
	ctx := context.Background()
	if out, err := podB.Command(ctx, testpod.Root, pillionBin, "wait", "--timeout=500ms").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "not ready after 500ms") || !strings.Contains(string(out), "no identity") {
		t.Errorf("pillion wait while b has no identity: %v, %q; want a failure naming the reason", err, out)
	}

	if err := os.Symlink(iss.Socket(podB), later); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "ready" }, 15*time.Second); !ok {
		t.Fatalf("b did not become ready once its socket appeared:\n%s", b.Proxy.Output())
	}
	if got := curl(t, podA, "-o", "/dev/null", "-w", "%{http_code}", bURL); got != "200" {
		t.Errorf("a's request to b once b has its SVID: %s, want 200\na:\n%s", got, a.Proxy.Output())
	}
	if out, err := podB.Command(ctx, testpod.Root, pillionBin, "wait", "--timeout=5s").CombinedOutput(); err != nil {
		t.Errorf("pillion wait once b is ready: %v, %q", err, out)
	}
}

// TestSVIDFromFiles: b's sidecar takes its identity from the PEM files of
// `pillion identity issue`, a's from the Workload API of the same CA.
func TestSVIDFromFiles(t *testing.T) {
	m := newHTTPMeshWith(t, func(a, b *testpod.Pod) ([]string, []string) {
		iss := meshtest.StartIssuer(t, pillionBin, time.Hour, a)
		out := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, args := range [][]string{
			{pillionBin, "identity", "issue", "--dir=" + iss.Dir, "--id=" + meshtest.PodID(b), "--out=" + out},
			{"chown", "-R", "1337:1337", out},
			{"chmod", "0755", filepath.Dir(out), out}, // t.TempDir is 0700: the proxy's UID must get in
		} {
			if msg, err := a.Command(ctx, testpod.Root, args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, msg)
			}
		}
		return []string{iss.ProxyArg(a)}, []string{
			"--svid-cert=" + filepath.Join(out, "svid.pem"),
			"--svid-key=" + filepath.Join(out, "svid-key.pem"),
			"--svid-bundle=" + filepath.Join(out, "bundle.pem"),
		}
	}, "", accessLogIn)
	if got := curl(t, m.a.Pod, "-o", "/dev/null", "-w", "%{http_code}", "http://"+m.bAddr+"/fixed"); got != "200" {
		t.Fatalf("a → b: %s, want 200", got)
	}
	aID := meshtest.PodID(m.a.Pod)
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.Peer == aID }, 5*time.Second); !ok {
		t.Errorf("b's access log does not name %s:\n%s", aID, m.b.Proxy.Output())
	}
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool {
		return l.Msg == "identity: SVID from files" && l.SpiffeID == meshtest.PodID(m.b.Pod)
	}, 0); !ok {
		t.Errorf("b did not log its SVID from files:\n%s", m.b.Proxy.Output())
	}
}

// TestProxyUnderAnotherUser: a sidecar started as root, in a pod whose
// capture exempts only UID 1337, would capture its own connections; it
// exits 2 naming both users, and never listens.
func TestProxyUnderAnotherUser(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv")
	pod := testpod.NewNode(t).AddPod(t, "a")
	ctx := context.Background()
	if out, err := pod.Command(ctx, testpod.Root, pillionBin, "init").CombinedOutput(); err != nil {
		t.Fatalf("pillion init: %v\n%s", err, out)
	}
	out, err := pod.Command(ctx, testpod.Root, pillionBin, "proxy").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 ||
		!strings.Contains(string(out), "--proxy-uid/--proxy-gid: running as UID 0 GID 0, but capture exempts UID 1337 GID 1337") {
		t.Fatalf("pillion proxy as root: %v\n%s\nwant exit 2 naming both users", err, out)
	}
	if strings.Contains(string(out), `"msg":"listening"`) {
		t.Errorf("the proxy listened before it refused:\n%s", out)
	}
}
