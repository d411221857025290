// Command demo is `make demo`: two pods (network namespaces) on one node,
// pillion's capture installed in each with `pillion init`, a sidecar in each
// running as UID 1337 with an identity from `pillion identity`, and a client
// application talking to a server application by pod IP, over TCP and over
// HTTP, in mTLS between the sidecars. A third pod without a sidecar is
// refused (STRICT). It prints what happened and what each sidecar saw, then
// removes everything (also on Ctrl-C).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
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

	step("Making a node and three pods (network namespaces joined by a bridge)")
	node := testpod.NewNode(s)
	client, server, outsider := node.AddPod(s, "client"), node.AddPod(s, "server"), node.AddPod(s, "outsider")
	for _, p := range []*testpod.Pod{client, server, outsider} {
		fmt.Printf("  %-7s %-11s %-12s (ip netns exec %s ...)\n", p.Name, p.IPv4, p.IPv6, p.NetNS)
	}
	meshtest.ServeEcho(s, server, ":8080")
	fmt.Println("  the server pod runs an application on port 8080 that answers \"<who I saw>|<what you said>\"")
	meshtest.ServeHTTP(s, server, ":8000", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		fmt.Fprintf(w, "hello over %s\n", r.Proto)
	}))
	fmt.Println("  and an HTTP/1.1 application on port 8000 that takes 20 ms to answer \"hello over <protocol>\"")

	step("Starting the built-in identity issuer on the node: 'pillion identity' (a CA, one Workload API socket per pod)")
	iss := meshtest.StartIssuer(s, bin, time.Hour, client, server)
	fmt.Printf("  CA in %s\n", iss.Dir)
	for _, p := range []*testpod.Pod{client, server} {
		fmt.Printf("  %-7s %s → %s\n", p.Name, iss.Socket(p), meshtest.PodID(p))
	}

	config := meshtest.WriteConfig(s, demoConfig)
	step("Injecting pillion in the client and server pods: 'pillion init' (as root), then 'pillion proxy' (as UID 1337)")
	fmt.Printf("  the sidecars' config (%s):\n    %s\n", config, strings.ReplaceAll(strings.TrimSpace(demoConfig), "\n", "\n    "))
	sidecars := map[string]*meshtest.Sidecar{}
	for _, p := range []*testpod.Pod{client, server} {
		sc := meshtest.Inject(s, bin, p, nil, []string{"--config=" + config, iss.ProxyArg(p)})
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
		fmt.Printf("                      over mTLS (%s) to %s\n", out.MTLS, out.Peer)
		fmt.Printf("    server's sidecar  inbound   %s → %s, forwarded to %s (%d B in, %d B back)\n",
			in.Src, in.Dst, in.Upstream, in.BytesSent, in.BytesReceived)
		fmt.Printf("                      over mTLS (%s) from %s\n", in.MTLS, in.Peer)
	}

	if err := httpCall(client, netip.AddrPortFrom(server.IPv4, 8000).String(), sidecars); err != nil {
		return err
	}
	if err := outsiderCall(outsider, netip.AddrPortFrom(server.IPv4, 8000).String(), sidecars["server"]); err != nil {
		return err
	}
	if err := showAdmin(client, server); err != nil {
		return err
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

// demoConfig is both sidecars' config file: the pods' subnets are the
// mesh, and each sidecar writes an access log line per HTTP request.
const demoConfig = `mesh:
  networks: ` + meshtest.MeshNetworks + `
  mode: STRICT
inbound:
  filters:
    - accesslog: {}
outbound:
  filters:
    - accesslog: {}
    - requestid: {}
`

// httpCall makes an HTTP/1.1 request from the client pod to target and
// shows what each hop did with it.
func httpCall(client *testpod.Pod, target string, sidecars map[string]*meshtest.Sidecar) error {
	step("The client application sends an HTTP/1.1 request to http://" + target + "/")
	res, err := meshtest.NewHTTPClient(client, false).Get("http://" + target + "/")
	if err != nil {
		return err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	fmt.Printf("  answer: %s, %q\n", res.Status, strings.TrimSpace(string(body)))
	fmt.Printf("  x-envoy-upstream-service-time: %s ms (set by the client's sidecar: the server's sidecar and the app's 20 ms)\n",
		res.Header.Get("X-Envoy-Upstream-Service-Time"))
	fmt.Println("  between the sidecars it travelled in mTLS as HTTP/2 on a pooled connection (see the server sidecar's line);")
	fmt.Println("  the server's sidecar handed it to the app as HTTP/1.1, the protocol the client used")
	for _, name := range []string{"client", "server"} {
		l, ok := sidecars[name].WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" }, 5*time.Second)
		if !ok {
			return fmt.Errorf("the %s sidecar wrote no access log line:\n%s", name, sidecars[name].Proxy.Output())
		}
		fmt.Printf("  %s's sidecar access log: %s %s %s %s → %d, upstream %.1f ms, flags %s\n",
			name, l.Direction, l.Protocol, l.Method, l.Authority+l.Path, l.Code, l.UpstreamMS, l.Flags)
		if l.Peer != "" {
			fmt.Printf("    the caller, as the server's sidecar saw it: %s\n", l.Peer)
		}
	}
	return nil
}

// outsiderCall makes a plaintext HTTP request from a pod without a sidecar
// to target, which the server's sidecar refuses under STRICT.
func outsiderCall(outsider *testpod.Pod, target string, server *meshtest.Sidecar) error {
	step("A pod without a sidecar sends the same request in plaintext (the mesh is STRICT)")
	res, err := meshtest.NewHTTPClient(outsider, false).Get("http://" + target + "/")
	if err == nil {
		res.Body.Close()
		return fmt.Errorf("the outsider got %s: STRICT let plaintext through", res.Status)
	}
	fmt.Printf("  refused: %v\n", err)
	l, ok := server.WaitLog(func(l meshtest.LogLine) bool {
		return strings.HasPrefix(l.Msg, "refusing a connection that is not mTLS")
	}, 5*time.Second)
	if !ok {
		return fmt.Errorf("the server sidecar did not log the refusal:\n%s", server.Proxy.Output())
	}
	fmt.Printf("  the server's sidecar: %q (from %s, %s)\n", l.Msg, l.Src, l.Protocol)
	return nil
}

// showAdmin prints the key outputs of the sidecars' admin endpoints, read
// from inside each pod as an operator would with curl.
func showAdmin(client, server *testpod.Pod) error {
	step("What the sidecars' admin endpoints show (curl 127.0.0.1:15000/... inside each pod)")
	get := func(pod *testpod.Pod, path string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15000"+path, nil)
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
	lines := func(text string, keep func(string) bool) {
		for l := range strings.SplitSeq(strings.TrimSpace(text), "\n") {
			if keep(l) {
				fmt.Println("    " + l)
			}
		}
	}
	all := func(string) bool { return true }

	for _, p := range []struct {
		pod    *testpod.Pod
		filter string
	}{{client, "pillion_requests_total"}, {server, `pillion_requests_total|reason="plaintext"`}} {
		path := "/stats?filter=" + url.QueryEscape(p.filter)
		out, err := get(p.pod, path)
		if err != nil {
			return err
		}
		fmt.Printf("  %s GET /stats?filter=%s\n", p.pod.Name, p.filter)
		lines(out, all)
	}

	out, err := get(client, "/clusters")
	if err != nil {
		return err
	}
	fmt.Println("  client GET /clusters (its pooled HTTP/2 connection to the server's sidecar; only some lines)")
	lines(out, func(l string) bool {
		return strings.HasPrefix(l, "http2_pool::") && (strings.Contains(l, "::cx_active::") || strings.Contains(l, "::protocol::"))
	})

	fmt.Println("  GET /certs (the workload SVIDs)")
	for _, pod := range []*testpod.Pod{client, server} {
		out, err := get(pod, "/certs")
		if err != nil {
			return err
		}
		var certs struct {
			Certificates []struct {
				CertChain []struct {
					SubjectAltNames []struct {
						URI string `json:"uri"`
					} `json:"subject_alt_names"`
					Seconds int64  `json:"seconds_until_expiration"`
					Expires string `json:"expiration_time"`
				} `json:"cert_chain"`
			} `json:"certificates"`
		}
		if err := json.Unmarshal([]byte(out), &certs); err != nil {
			return fmt.Errorf("%s's /certs: %w: %s", pod.Name, err, out)
		}
		if len(certs.Certificates) == 0 || len(certs.Certificates[0].CertChain) == 0 || len(certs.Certificates[0].CertChain[0].SubjectAltNames) == 0 {
			return fmt.Errorf("%s's /certs shows no SVID: %s", pod.Name, out)
		}
		c := certs.Certificates[0].CertChain[0]
		fmt.Printf("    %-7s %s, expires %s (in %s)\n", pod.Name, c.SubjectAltNames[0].URI, c.Expires,
			(time.Duration(c.Seconds) * time.Second).Round(time.Minute))
	}
	fmt.Println("  also /ready, /listeners, /config_dump, /server_info, /help; Prometheus scrapes :15090, kubelet probes :15021")
	return nil
}

func step(msg string) { fmt.Printf("\n== %s\n", msg) }

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
