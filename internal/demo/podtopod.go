package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// podToPod is part 1: the client application calls the server
// application by pod IP through both sidecars; the outsider, without a
// sidecar, is refused.
func (d *demo) podToPod() error {
	client, server, s := d.client, d.server, d.s
	step("Part 1, pod to pod. The server pod runs two applications")
	meshtest.ServeEcho(s, server, ":8080")
	fmt.Println("  on port 8080, one that answers \"<who I saw>|<what you said>\"")
	meshtest.ServeHTTP(s, server, ":8000", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		fmt.Fprintf(w, "hello over %s\n", r.Proto)
	}))
	fmt.Println("  on port 8000, an HTTP/1.1 one that takes 20 ms to answer \"hello over <protocol>\"")

	config := meshtest.WriteConfig(s, demoConfig)
	step("Injecting pillion in the client and server pods: 'pillion init' (as root), then 'pillion proxy' (as UID 1337)")
	fmt.Printf("  the sidecars' config (%s):\n    %s\n", config, strings.ReplaceAll(strings.TrimSpace(demoConfig), "\n", "\n    "))
	sidecars := map[string]*meshtest.Sidecar{}
	for _, p := range []*testpod.Pod{client, server} {
		sc := meshtest.Inject(s, d.bin, p, nil, []string{"--config=" + config, d.iss.ProxyArg(p)})
		sidecars[p.Name] = sc
		fmt.Printf("  %s: %s", p.Name, indent(sc.Init))
	}
	if err := tcpCall(client, server, sidecars); err != nil {
		return err
	}
	if err := httpCall(client, netip.AddrPortFrom(server.IPv4, 8000).String(), sidecars); err != nil {
		return err
	}
	if err := outsiderCall(d.outsider, netip.AddrPortFrom(server.IPv4, 8000).String(), sidecars["server"]); err != nil {
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
	for l := range strings.SplitSeq(rules, "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, "PILLION") {
			fmt.Println("  " + l)
		}
	}
	return nil
}

// tcpCall has the client application send a line to the echo application
// over IPv4, showing what each hop did with the connection, then over
// IPv6.
func tcpCall(client, server *testpod.Pod, sidecars map[string]*meshtest.Sidecar) error {
	target := netip.AddrPortFrom(server.IPv4, 8080).String()
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

	target6 := netip.AddrPortFrom(server.IPv6, 8080).String()
	if _, answer, err = meshtest.Call(client, target6, "hello over IPv6"); err != nil {
		return err
	}
	in6, ok := sidecars["server"].WaitConnection("inbound", target6, 5*time.Second)
	if !ok {
		return fmt.Errorf("the server sidecar did not log the IPv6 connection:\n%s", sidecars["server"].Proxy.Output())
	}
	fmt.Printf("  the same over IPv6, to %s: answered %q; the server's sidecar saw %s over mTLS (%s) from %s\n",
		target6, answer, in6.Src, in6.MTLS, in6.Peer)
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
	all := func(string) bool { return true }

	for _, p := range []struct {
		pod    *testpod.Pod
		filter string
	}{{client, "pillion_requests_total"}, {server, `pillion_requests_total|reason="plaintext"`}} {
		path := "/stats?filter=" + url.QueryEscape(p.filter)
		out, err := adminGet(p.pod, path)
		if err != nil {
			return err
		}
		fmt.Printf("  %s GET /stats?filter=%s\n", p.pod.Name, p.filter)
		printLines(out, all)
	}

	out, err := adminGet(client, "/clusters")
	if err != nil {
		return err
	}
	fmt.Println("  client GET /clusters (its pooled HTTP/2 connection to the server's sidecar; only some lines)")
	printLines(out, func(l string) bool {
		return strings.HasPrefix(l, "http2_pool::") && (strings.Contains(l, "::cx_active::") || strings.Contains(l, "::protocol::"))
	})

	fmt.Println("  GET /certs (the workload SVIDs)")
	for _, pod := range []*testpod.Pod{client, server} {
		out, err := adminGet(pod, "/certs")
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
