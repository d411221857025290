package meshtest

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	ids     map[string]string // SPIFFE IDs, by pod name
	root    string            // the temporary folder of the sockets and Dir
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
	return StartIssuerWith(t, bin, ttl, IssuerOptions{CATTL: caTTL}, pods...)
}

// WorkloadID is the SPIFFE ID of service account sa in namespace ns, in
// TrustDomain: spiffe://cluster.local/ns/<ns>/sa/<sa>.
func WorkloadID(ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, ns, sa)
}

// IssuerOptions are StartIssuerWith's choices; the zero value is
// StartIssuer's behaviour.
type IssuerOptions struct {
	// CATTL is how long the CA lives; zero is pillion identity's default.
	CATTL time.Duration
	// IDs gives the pods named here (by testpod.Pod.Name) this SPIFFE ID
	// instead of PodID, e.g. to make a pod present another workload's SVID.
	IDs map[string]string
	// Sockets are more Workload API sockets, each handing out its SPIFFE
	// ID, for workloads that are not test pods (a server on the node): by
	// path, where a relative path is in the issuer's folder, readable by
	// every user and removed with it (Issuer.SocketPath resolves it).
	Sockets map[string]string
}

// StartIssuerWith is StartIssuer with the choices in opts. It fails t if
// a name in opts.IDs is not one of pods' names.
func StartIssuerWith(t testpod.Cleaner, bin string, ttl time.Duration, opts IssuerOptions, pods ...*testpod.Pod) *Issuer {
	t.Helper()
	dir, err := os.MkdirTemp("", "pillion-id-")
	if err != nil {
		t.Fatalf("meshtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the sidecars' UID reaches the sockets
		t.Fatalf("meshtest: %v", err)
	}
	iss := &Issuer{Dir: filepath.Join(dir, "ca"), sockets: map[string]string{}, ids: map[string]string{}, root: dir}
	args := []string{"identity", "--dir=" + iss.Dir, "--trust-domain=" + TrustDomain, "--svid-ttl=" + ttl.String()}
	if opts.CATTL > 0 {
		args = append(args, "--ca-ttl="+opts.CATTL.String())
	}
	for _, p := range pods {
		sock := filepath.Join(dir, p.Name+".sock")
		id := PodID(p)
		if o, ok := opts.IDs[p.Name]; ok {
			id = o
		}
		iss.sockets[p.Name], iss.ids[p.Name] = sock, id
		args = append(args, "--socket="+sock+"="+id)
	}
	for name := range opts.IDs {
		if _, ok := iss.ids[name]; !ok {
			t.Fatalf("meshtest: IssuerOptions.IDs names %q, which is not one of the issuer's pods", name)
		}
	}
	extra := make([]string, 0, len(opts.Sockets))
	for path, id := range opts.Sockets {
		sock := iss.SocketPath(path)
		extra = append(extra, sock)
		args = append(args, "--socket="+sock+"="+id)
	}
	iss.Proc = testpod.StartOnNode(t, bin, args...)
	deadline := time.Now().Add(15 * time.Second)
	for _, sock := range append(slices.Collect(maps.Values(iss.sockets)), extra...) {
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

// SocketPath is where an extra socket named path in IssuerOptions.Sockets
// is: path itself when absolute, else in the issuer's folder.
func (iss *Issuer) SocketPath(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(iss.root, path)
}

// ID is the SPIFFE ID the issuer hands pod: PodID(pod) unless
// IssuerOptions.IDs said otherwise; empty for a pod it does not serve.
func (iss *Issuer) ID(pod *testpod.Pod) string { return iss.ids[pod.Name] }

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
