// Command demo is `make demo`: two pods (network namespaces) on one node,
// pillion's capture installed in each with `pillion init`, a sidecar in each
// running as UID 1337, and a client application talking to a server
// application by pod IP. It prints what happened and which sidecar saw
// which connection, then removes everything (also on Ctrl-C).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
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

func run(s *testpod.Session, hold bool) error {
	root, err := meshtest.ModuleRoot()
	if err != nil {
		return err
	}
	step("Building pillion")
	bin, remove, err := meshtest.Build(root)
	if err != nil {
		return err
	}
	s.Cleanup(remove)

	step("Making a node and two pods (network namespaces joined by a bridge)")
	node := testpod.NewNode(s)
	client, server := node.AddPod(s, "client"), node.AddPod(s, "server")
	for _, p := range []*testpod.Pod{client, server} {
		fmt.Printf("  %-7s %-11s %-12s (ip netns exec %s ...)\n", p.Name, p.IPv4, p.IPv6, p.NetNS)
	}
	meshtest.ServeEcho(s, server, ":8080")
	fmt.Println("  the server pod runs an application on port 8080 that answers \"<who I saw>|<what you said>\"")

	step("Injecting pillion: 'pillion init' (as root) then 'pillion proxy' (as UID 1337) in each pod")
	sidecars := map[string]*meshtest.Sidecar{}
	for _, p := range []*testpod.Pod{client, server} {
		sc := meshtest.Inject(s, bin, p, nil, nil)
		sidecars[p.Name] = sc
		fmt.Printf("  %s: %s", p.Name, indent(sc.Init))
	}

	for _, dst := range []netip.Addr{server.IPv4, server.IPv6} {
		target := netip.AddrPortFrom(dst, 8080).String()
		step("The client application connects to " + target + " and says hello")
		peer, answer, err := meshtest.Call(client, target, "hello from the client")
		if err != nil {
			return err
		}
		fmt.Printf("  the server application answered %q\n", answer)
		fmt.Printf("  and saw the connection come from %s: its own sidecar, not the client pod\n", peer)
		out, ok1 := sidecars["client"].WaitConnection("outbound", target, 5*time.Second)
		in, ok2 := sidecars["server"].WaitConnection("inbound", target, 5*time.Second)
		if !ok1 || !ok2 {
			return fmt.Errorf("a sidecar did not log the connection\nclient:\n%s\nserver:\n%s",
				sidecars["client"].Proxy.Output(), sidecars["server"].Proxy.Output())
		}
		fmt.Println("  what the sidecars saw:")
		fmt.Printf("    client's sidecar  outbound  %s → %s, forwarded there      (%d B out, %d B back; %s by %s)\n",
			out.Src, out.Dst, out.BytesSent, out.BytesReceived, out.Protocol, out.Detection)
		fmt.Printf("    server's sidecar  inbound   %s → %s, forwarded to %s (%d B in, %d B back; %s by %s)\n",
			in.Src, in.Dst, in.Upstream, in.BytesSent, in.BytesReceived, in.Protocol, in.Detection)
	}

	step("The capture rules in the server pod (iptables-save -t nat)")
	rules, err := server.Exec(context.Background(), "iptables-save", "-t", "nat")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, "PILLION") {
			fmt.Println("  " + l)
		}
	}

	if hold {
		step("Holding the pods; try: ip netns exec " + client.NetNS + " bash. Ctrl-C to clean up")
		select {}
	}
	step("Cleaning up: sidecars stopped, namespaces and their rules removed")
	return nil
}

func step(msg string) { fmt.Printf("\n== %s\n", msg) }

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
