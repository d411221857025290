package meshtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// TrustDomain is the trust domain of the test meshes.
const TrustDomain = "cluster.local"

// PodID is the SPIFFE ID the test issuer gives pod's sidecar: pod's name
// as its service account, in namespace default.
func PodID(pod *testpod.Pod) string {
	return fmt.Sprintf("spiffe://%s/ns/default/sa/%s", TrustDomain, pod.Name)
}

// Issuer is `pillion identity` running on the node, as a node agent would:
// one Workload API socket per pod, each handing out the pod's PodID.
type Issuer struct {
	// Dir is the CA's folder.
	Dir     string
	Proc    *testpod.Process
	sockets map[string]string // by pod name
}

// StartIssuer starts `pillion identity` (bin) with a socket for each pod,
// SVIDs living ttl, and waits until every socket is served. It is stopped
// when the test ends.
func StartIssuer(t testpod.Cleaner, bin string, ttl time.Duration, pods ...*testpod.Pod) *Issuer {
	t.Helper()
	return StartRotatingIssuer(t, bin, ttl, 0, pods...)
}

// StartRotatingIssuer is StartIssuer with a CA that lives caTTL (zero:
// pillion identity's default), so that the trust bundle rotates too.
func StartRotatingIssuer(t testpod.Cleaner, bin string, ttl, caTTL time.Duration, pods ...*testpod.Pod) *Issuer {
	t.Helper()
	dir, err := os.MkdirTemp("", "pillion-id-")
	if err != nil {
		t.Fatalf("meshtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the sidecars' UID reaches the sockets
		t.Fatalf("meshtest: %v", err)
	}
	iss := &Issuer{Dir: filepath.Join(dir, "ca"), sockets: map[string]string{}}
	args := []string{"identity", "--dir=" + iss.Dir, "--trust-domain=" + TrustDomain, "--svid-ttl=" + ttl.String()}
	if caTTL > 0 {
		args = append(args, "--ca-ttl="+caTTL.String())
	}
	for _, p := range pods {
		sock := filepath.Join(dir, p.Name+".sock")
		iss.sockets[p.Name] = sock
		args = append(args, "--socket="+sock+"="+PodID(p))
	}
	iss.Proc = testpod.StartOnNode(t, bin, args...)
	deadline := time.Now().Add(15 * time.Second)
	for _, sock := range iss.sockets {
		for {
			if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
				break
			}
			select {
			case <-iss.Proc.Done():
				t.Fatalf("meshtest: pillion identity exited:\n%s", iss.Output())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("meshtest: pillion identity did not serve %s in 15s:\n%s", sock, iss.Output())
			}
		}
	}
	return iss
}

// Socket is the Workload API socket of pod.
func (iss *Issuer) Socket(pod *testpod.Pod) string { return iss.sockets[pod.Name] }

// ProxyArg is the proxy flag that takes pod's identity from the issuer.
func (iss *Issuer) ProxyArg(pod *testpod.Pod) string { return "--spiffe-socket=" + iss.Socket(pod) }

// Output is what the issuer logged so far.
func (iss *Issuer) Output() string { return iss.Proc.Output() }

// Lines returns the issuer's log lines whose message contains msg.
func (iss *Issuer) Lines(msg string) []string {
	var out []string
	for _, l := range strings.Split(iss.Output(), "\n") {
		if strings.Contains(l, msg) {
			out = append(out, l)
		}
	}
	return out
}
