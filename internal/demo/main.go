// Command demo is `make demo`, in two parts.
//
// Pod to pod (podtopod.go): pods (network namespaces) on one node,
// pillion's capture installed in each with `pillion init`, a sidecar in
// each running as UID 1337 with an identity from `pillion identity`, and a
// client application talking to a server application by pod IP, over TCP
// and over HTTP, in mTLS between the sidecars; a pod without a sidecar is
// refused (STRICT).
//
// A Service (service.go, steps.go): a real kube-apiserver, etcd and
// kube-controller-manager, `pillion discovery` watching them, and a
// client's sidecar that balances each request to the Service's ClusterIP
// across its pods, refuses a pod that presents another workload's identity
// and follows a pod's deletion.
//
// It prints what happened and what the sidecars saw, then removes
// everything (also on Ctrl-C). Any step that does not go as shown ends it
// with exit status 1 and the reason.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/sidecar"
)

func main() {
	hold := flag.Bool("hold", false, "keep the pods after the demo until Ctrl-C, to explore them with 'ip netns exec'")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the demo needs root: it creates network namespaces and iptables rules. Run: sudo make demo")
		os.Exit(1)
	}
	s := testpod.NewSession()
	defer s.Close()
	if err := run(s, *hold); err != nil {
		s.Fatalf("demo: %v", err)
	}
}

// demo is what both parts share: the binary, the node and its pods, and
// the identity issuer.
type demo struct {
	s    *testpod.Session
	bin  string // the lean build of the sidecar image, for the pods
	ctl  string // the full build, for pillion discovery
	node *testpod.Node
	iss  *meshtest.Issuer

	client, server, outsider *testpod.Pod   // pod to pod
	frontend                 *testpod.Pod   // the Service's client
	web                      []*testpod.Pod // web-0..web-3
}

// webPods is how many web-N pods the Service part uses: web-0..web-2
// serve the Service from the start; web-3 joins it later, presenting
// web-0's identity.
const webPods = 4

// discoveryID is the SPIFFE ID `pillion discovery` presents: the one
// sidecars expect by default.
var discoveryID = meshtest.WorkloadID("pillion-system", "pillion-discovery")

func run(s *testpod.Session, hold bool) error {
	start := time.Now()
	root, err := meshtest.ModuleRoot()
	if err != nil {
		return err
	}
	step("Building pillion")
	bin, remove, err := meshtest.Build(root, "lean")
	if err != nil {
		return err
	}
	s.Cleanup(remove)
	ctl, remove, err := meshtest.Build(root)
	if err != nil {
		return err
	}
	s.Cleanup(remove)
	built := time.Now()

	d := &demo{s: s, bin: bin, ctl: ctl}
	d.makePods()
	d.startIssuer()
	if err := d.podToPod(); err != nil {
		return err
	}
	if err := d.service(); err != nil {
		return err
	}
	if hold {
		step("Holding the pods; try: ip netns exec " + d.frontend.NetNS + " bash. Ctrl-C to clean up")
		select {}
	}
	step(fmt.Sprintf("Cleaning up: the sidecars, discovery and the cluster stopped, the namespaces and their rules removed "+
		"(the demo ran %v, after a %v build)", time.Since(built).Round(100*time.Millisecond), built.Sub(start).Round(100*time.Millisecond)))
	return nil
}

// makePods makes the node and every pod of both parts.
func (d *demo) makePods() {
	step("Making a node and eight pods (network namespaces joined by a bridge)")
	d.node = testpod.NewNode(d.s)
	d.client, d.server, d.outsider = d.node.AddPod(d.s, "client"), d.node.AddPod(d.s, "server"), d.node.AddPod(d.s, "outsider")
	d.frontend = d.node.AddPod(d.s, "frontend")
	for i := range webPods {
		d.web = append(d.web, d.node.AddPod(d.s, fmt.Sprintf("web-%d", i)))
	}
	for _, p := range append([]*testpod.Pod{d.client, d.server, d.outsider, d.frontend}, d.web...) {
		fmt.Printf("  %-8s %-11s %-12s (ip netns exec %s ...)\n", p.Name, p.IPv4, p.IPv6, p.NetNS)
	}
	fmt.Println("  part 1: client, server and outsider talk pod to pod; part 2: frontend calls the Service web, served by web-*")
}

// startIssuer starts `pillion identity` with a socket for each pod with a
// sidecar and one for discovery. web-3's hands out web-0's SVID.
func (d *demo) startIssuer() {
	step("Starting the built-in identity issuer on the node: 'pillion identity' (a CA, one Workload API socket per workload)")
	meshed := append([]*testpod.Pod{d.client, d.server, d.frontend}, d.web...)
	web0, web3 := d.web[0], d.web[3]
	d.iss = meshtest.StartIssuerWith(d.s, d.bin, time.Hour, meshtest.IssuerOptions{
		IDs:     map[string]string{web3.Name: meshtest.PodID(web0)},
		Sockets: map[string]string{"discovery.sock": discoveryID},
	}, meshed...)
	fmt.Printf("  CA in %s\n", d.iss.Dir)
	for _, p := range meshed {
		note := ""
		if p == web3 {
			note = "  (web-0's, not its own: see part 2)"
		}
		fmt.Printf("  %-9s %s → %s%s\n", p.Name, d.iss.Socket(p), d.iss.ID(p), note)
	}
	fmt.Printf("  %-9s %s → %s\n", "discovery", d.iss.SocketPath("discovery.sock"), discoveryID)
}

// adminGet reads path from the admin endpoint of the sidecar in pod, from
// inside the pod, as an operator would with curl.
func adminGet(pod *testpod.Pod, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", sidecar.AdminPort, path), nil)
	if err != nil {
		return "", err
	}
	res, err := meshtest.NewHTTPClient(pod, false).Do(req)
	if err != nil {
		return "", fmt.Errorf("%s's admin endpoint: %w", pod.Name, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", res.Status)
	}
	if err != nil {
		return "", fmt.Errorf("%s's admin endpoint: GET %s: %w: %s", pod.Name, path, err, body)
	}
	return string(body), nil
}

// printLines prints the lines of text that keep accepts, indented.
func printLines(text string, keep func(string) bool) {
	for l := range strings.SplitSeq(strings.TrimSpace(text), "\n") {
		if keep(l) {
			fmt.Println("    " + l)
		}
	}
}

func step(msg string) { fmt.Printf("\n== %s\n", msg) }

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
