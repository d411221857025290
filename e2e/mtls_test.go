package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/mtls"
)

// marker is a string the tests send and then look for on the wire.
const marker = "pillion-wire-marker-5c1d"

const accessLogIn = "inbound: {filters: [{accesslog: {}}]}\n"

// TestMTLSOnTheWire: HTTP and opaque TCP from a to b cross the node as
// TLS, never in the clear, and b's sidecar knows a's SPIFFE ID. A pod
// without a sidecar (c) reaches b in the clear under PERMISSIVE, which also
// shows the capture would see the marker if it were there.
func TestMTLSOnTheWire(t *testing.T) {
	m := newHTTPMesh(t, "", accessLogIn)
	meshtest.ServeEcho(t, m.b.Pod, ":9000")
	podC := m.node.AddPod(t, "c")
	capture := m.node.Capture(t)

	var saw appSaw
	decodeJSON(t, curl(t, m.a.Pod, "-H", "X-Marker: "+marker, "http://"+m.bAddr+"/echo?"+marker), &saw)
	if saw.Header.Get("X-Marker") != marker {
		t.Fatalf("the app did not get the request: %+v", saw)
	}
	if _, echoed, err := meshtest.Call(m.a.Pod, hostPort(m.b.Pod.IPv4, 9000), "OPAQUE "+marker); err != nil || echoed != "OPAQUE "+marker {
		t.Fatalf("opaque TCP across the mesh: %q, %v", echoed, err)
	}

	// b's sidecar names the caller, in the access log and the connection log.
	aID := meshtest.PodID(m.a.Pod)
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.Peer == aID }, 5*time.Second); !ok {
		t.Errorf("no inbound access log line with peer %s:\n%s", aID, m.b.Proxy.Output())
	}
	if l, ok := m.b.WaitConnection("inbound", hostPort(m.b.Pod.IPv4, 9000), 5*time.Second); !ok || l.Peer != aID || l.MTLS != mtls.ProtoTCP {
		t.Errorf("inbound opaque connection logged as %+v (found %v); want peer %s over %s", l, ok, aID, mtls.ProtoTCP)
	}
	bID := meshtest.PodID(m.b.Pod)
	if l, ok := m.a.WaitConnection("outbound", hostPort(m.b.Pod.IPv4, 9000), 5*time.Second); !ok || l.Peer != bID || l.MTLS != mtls.ProtoTCP {
		t.Errorf("outbound opaque connection logged as %+v (found %v); want peer %s over %s", l, ok, bID, mtls.ProtoTCP)
	}

	// Control: plaintext from c, no sidecar, passed under PERMISSIVE.
	const plainMarker = "pillion-plain-marker-91e0"
	decodeJSON(t, curl(t, podC, "-H", "X-Marker: "+plainMarker, "http://"+m.bAddr+"/echo"), &saw)
	if saw.Header.Get("X-Marker") != plainMarker {
		t.Fatalf("PERMISSIVE did not pass plaintext: %+v", saw)
	}
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "access" && l.Peer == "" }, 5*time.Second); !ok {
		t.Errorf("no access log line without a peer for the plaintext request")
	}
	capture.Stop()

	for _, port := range []uint16{8080, 9000} {
		segs := capture.Segments(port)
		var sawTLSData, sawALPN bool
		for _, s := range segs {
			if bytes.Contains(s.Payload, []byte(marker)) {
				t.Errorf("port %d: the marker crossed the node in the clear: %q", port, s.Payload)
			}
			sawTLSData = sawTLSData || bytes.HasPrefix(s.Payload, []byte{0x17, 0x03, 0x03}) // TLS application data
			sawALPN = sawALPN || bytes.Contains(s.Payload, []byte("pillion/"))
		}
		if !sawTLSData || !sawALPN {
			t.Errorf("port %d: %d segments, TLS application data %v, a pillion ALPN %v; want both", port, len(segs), sawTLSData, sawALPN)
		}
	}
	var plainSeen bool
	for _, s := range capture.Segments(8080) {
		plainSeen = plainSeen || bytes.Contains(s.Payload, []byte(plainMarker))
	}
	if !plainSeen {
		t.Error("the capture did not see the plaintext request either: it proves nothing")
	}
}

// TestMTLSStrict: under STRICT, b refuses a client without a sidecar and
// still serves its mesh peer; back to PERMISSIVE by reload, it serves both.
func TestMTLSStrict(t *testing.T) {
	strict := "mesh: {networks: " + meshtest.MeshNetworks + ", mode: STRICT}\n"
	m := newHTTPMesh(t, "", strict)
	podC := m.node.AddPod(t, "c")

	if got := curl(t, m.a.Pod, "-o", "/dev/null", "-w", "%{http_code}", "http://"+m.bAddr+"/fixed"); got != "200" {
		t.Fatalf("mesh peer under STRICT: %s, want 200", got)
	}
	out, err := podC.Command(context.Background(), testpod.Root, "curl", "-sS", "--max-time", "5", "http://"+m.bAddr+"/fixed").CombinedOutput()
	if err == nil {
		t.Fatalf("plaintext client got an answer under STRICT: %s", out)
	}
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool {
		return strings.HasPrefix(l.Msg, "refusing a connection that is not mTLS")
	}, 5*time.Second); !ok {
		t.Errorf("no refusal logged:\n%s", m.b.Proxy.Output())
	}

	meshtest.UpdateConfig(t, m.configB, meshConfig)
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "config reloaded" }, 10*time.Second); !ok {
		t.Fatalf("b did not reload:\n%s", m.b.Proxy.Output())
	}
	if got := curl(t, podC, "-o", "/dev/null", "-w", "%{http_code}", "http://"+m.bAddr+"/fixed"); got != "200" {
		t.Errorf("plaintext client under PERMISSIVE: %s, want 200", got)
	}
}

// TestMTLSRefusesBadPeers: b's sidecar refuses, and says why, a client of
// another trust domain, and clients whose certificates are expired or not
// yet valid. A sidecar of another trust domain cannot reach b either.
func TestMTLSRefusesBadPeers(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	meshtest.ServeEcho(t, m.b.Pod, ":9000")
	podC := m.node.AddPod(t, "c")
	b9000 := hostPort(m.b.Pod.IPv4, 9000)
	ca := svidtest.CA(t, m.issuer.Dir, meshtest.TrustDomain) // the issuer's own CA
	other := svidtest.CA(t, "", "other.org")
	now := time.Now()
	cID := "spiffe://" + meshtest.TrustDomain + "/ns/default/sa/c"
	bundles := x509bundle.NewSet(ca.Bundle(), other.Bundle())

	for _, tc := range []struct {
		name   string
		src    svidtest.Source
		reason mtls.Failure
	}{
		{"another trust domain", svidtest.Source{SVID: svidtest.Issue(t, other, "spiffe://other.org/ns/default/sa/c"), Bundles: bundles}, mtls.FailureOtherTrustDomain},
		{"expired", svidtest.Source{SVID: svidtest.IssueAt(t, m.issuer.Dir, cID, now.Add(-time.Minute), now.Add(-time.Second)), Bundles: bundles}, mtls.FailureExpired},
		{"not yet valid", svidtest.Source{SVID: svidtest.IssueAt(t, m.issuer.Dir, cID, now.Add(time.Hour), now.Add(2*time.Hour)), Bundles: bundles}, mtls.FailureExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusals := func() int {
				return countLogs(m.b, func(l meshtest.LogLine) bool {
					return l.Msg == "mTLS handshake failed" && l.Reason == tc.reason.String()
				})
			}
			before := refusals()
			if err := mtlsProbe(podC, b9000, tc.src); err == nil {
				t.Fatal("b's sidecar accepted the handshake")
			}
			// The log reaches us through a pipe: wait for the new line.
			deadline := time.Now().Add(5 * time.Second)
			for refusals() < before+1 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := refusals(); got != before+1 {
				t.Errorf("b logged %d refusals with reason %s, want %d:\n%s", got, tc.reason, before+1, m.b.Proxy.Output())
			}
		})
	}
	// The control: a good SVID from the same CA is accepted.
	if err := mtlsProbe(podC, b9000, svidtest.SourceFor(t, ca, cID)); err != nil {
		t.Errorf("a valid SVID of the trust domain was refused: %v", err)
	}
}

// mtlsProbe makes one mTLS connection from pod to addr with src's SVID,
// as a peer sidecar would (ALPN pillion/tcp), and reads until b answers or
// closes: TLS 1.3 servers report a refused client certificate after the
// client's side of the handshake is done.
func mtlsProbe(pod *testpod.Pod, addr string, src svidtest.Source) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	tc := tls.Client(c, mtls.ClientConfig(src, mtls.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString(meshtest.TrustDomain)), mtls.ProtoTCP))
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return err
	}
	if _, err := tc.Write([]byte("PROBE")); err != nil {
		return err
	}
	if err := tc.CloseWrite(); err != nil {
		return err
	}
	_, err = tc.Read(make([]byte, 64))
	return err
}

func countLogs(sc *meshtest.Sidecar, match func(meshtest.LogLine) bool) int {
	n := 0
	for _, l := range sc.Logs() {
		if match(l) {
			n++
		}
	}
	return n
}

// TestAuthzAcrossTheMesh: b's authz filter lets a read /public and
// nothing else, over HTTP; over opaque TCP, a rule that needs a path never
// matches, so a's connection to b:9000 is closed.
func TestAuthzAcrossTheMesh(t *testing.T) {
	aID := "spiffe://" + meshtest.TrustDomain + "/ns/default/sa/a"
	m := newHTTPMesh(t, "", `inbound:
  filters:
    - authz:
        allow:
          - {id: "`+aID+`", methods: [GET], paths: ["/fixed"]}
`)
	meshtest.ServeEcho(t, m.b.Pod, ":9000")
	if got := curl(t, m.a.Pod, "-o", "/dev/null", "-w", "%{http_code}", "http://"+m.bAddr+"/fixed"); got != "200" {
		t.Errorf("allowed request: %s, want 200", got)
	}
	out := strings.ToLower(curl(t, m.a.Pod, "-i", "http://"+m.bAddr+"/echo"))
	if !strings.HasPrefix(out, "http/1.1 403") || !strings.Contains(out, "pillion-response-flags: uaex") || !strings.Contains(out, "rbac: access denied") {
		t.Errorf("denied request answered:\n%s", out)
	}
	if _, echoed, err := meshtest.Call(m.a.Pod, hostPort(m.b.Pod.IPv4, 9000), "OPAQUE"); err == nil && echoed != "" {
		t.Errorf("opaque TCP from a denied peer was relayed: %q", echoed)
	}
	if _, ok := m.b.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "connection denied" && l.Peer == aID }, 5*time.Second); !ok {
		t.Errorf("b did not log the denied connection:\n%s", m.b.Proxy.Output())
	}
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("not JSON: %v: %q", err, s)
	}
}

// TestMTLSCarriesAnyProtocol: what is not HTTP crosses the mesh as one
// opaque stream in mTLS: the application's own TLS, and a server-first
// protocol on an opaque port, which b's sidecar tells from a peer's
// ClientHello at once (no sniff time-out) although it never serves that
// port as HTTP.
func TestMTLSCarriesAnyProtocol(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	serveTLS(t, m.b.Pod, ":8443")
	meshtest.ServeHello(t, m.b.Pod, ":3306")
	bID := meshtest.PodID(m.b.Pod)

	for _, tc := range []struct {
		name, dst, outProto string
		call                func(dst string) (string, error)
		want                string
	}{
		{"the application's own TLS", hostPort(m.b.Pod.IPv4, 8443), "tls", func(dst string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw, err := m.a.Pod.Dial(ctx, "tcp", dst)
			if err != nil {
				return "", err
			}
			defer raw.Close()
			c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "b"}) // the app's self-signed server
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			return bufio.NewReader(c).ReadString('\n')
		}, "tls ok\n"},
		{"server-first on an opaque port", hostPort(m.b.Pod.IPv4, 3306), "opaque", func(dst string) (string, error) {
			return greeting(m.a.Pod, dst)
		}, "127.0.0.6\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := tc.call(tc.dst); err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
			out, ok := m.a.WaitConnection("outbound", tc.dst, 5*time.Second)
			if !ok || out.Protocol != tc.outProto || out.MTLS != mtls.ProtoTCP || out.Peer != bID {
				t.Errorf("a's outbound line: %+v (found %v); want %s in %s to %s", out, ok, tc.outProto, mtls.ProtoTCP, bID)
			}
			in, ok := m.b.WaitConnection("inbound", tc.dst, 5*time.Second)
			if !ok || in.MTLS != mtls.ProtoTCP || in.Detection != "first bytes" {
				t.Errorf("b's inbound line: %+v (found %v); want %s detected by its first bytes", in, ok, mtls.ProtoTCP)
			}
		})
	}
}
