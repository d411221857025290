package mtls_test

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

type staticSource = svidtest.Source

func testCA(t *testing.T, td string) *issuer.CA { return svidtest.CA(t, "", td) }

func issue(t *testing.T, ca *issuer.CA, id string) *x509svid.SVID { return svidtest.Issue(t, ca, id) }

var issueAt = svidtest.IssueAt

// handshake runs one handshake between client and server over loopback
// TCP and returns both sides' errors and the server's view.
func handshake(t *testing.T, client, server *tls.Config) (state tls.ConnectionState, clientErr, serverErr error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		serverErr = tc.Handshake()
		state = tc.ConnectionState()
		if serverErr == nil {
			_, _ = tc.Write([]byte("x")) // TLS 1.3: the client learns of a refusal at its first read
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		_, clientErr = tc.Read(make([]byte, 1))
	}
	<-done
	return state, clientErr, serverErr
}

func TestHandshake(t *testing.T) {
	const (
		serverID = "spiffe://cluster.local/ns/shop/sa/backend"
		clientID = "spiffe://cluster.local/ns/shop/sa/frontend"
	)
	caDir := t.TempDir()
	ca, _, err := issuer.OpenCA(caDir, spiffeid.RequireTrustDomainFromString("cluster.local"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other := testCA(t, "other.org")
	bundles := x509bundle.NewSet(ca.Bundle())
	serverSrc := staticSource{SVID: issue(t, ca, serverID), Bundles: bundles}
	now := time.Now()

	for _, tc := range []struct {
		name       string
		client     staticSource
		server     staticSource
		wantServer mtls.Failure // used when wantPeer is ""
		wantPeer   string       // the handshake succeeds
	}{
		{name: "same trust domain", client: staticSource{SVID: issue(t, ca, clientID), Bundles: bundles},
			server: serverSrc, wantPeer: clientID},
		{name: "client of another trust domain", wantServer: mtls.FailureOtherTrustDomain,
			client: staticSource{SVID: issue(t, other, "spiffe://other.org/ns/x/sa/y"), Bundles: x509bundle.NewSet(other.Bundle(), ca.Bundle())},
			server: serverSrc},
		{name: "expired client", wantServer: mtls.FailureExpired,
			client: staticSource{SVID: issueAt(t, caDir, clientID, now.Add(-2*time.Hour), now.Add(-time.Hour)), Bundles: bundles},
			server: serverSrc},
		{name: "client not yet valid", wantServer: mtls.FailureExpired,
			client: staticSource{SVID: issueAt(t, caDir, clientID, now.Add(time.Hour), now.Add(2*time.Hour)), Bundles: bundles},
			server: serverSrc},
		{name: "client with an SVID of the right trust domain from another CA", wantServer: mtls.FailureUntrusted,
			client: staticSource{SVID: issue(t, testCA(t, "cluster.local"), clientID), Bundles: bundles},
			server: serverSrc},
		{name: "server without an SVID", wantServer: mtls.FailureNoSVID,
			client: staticSource{SVID: issue(t, ca, clientID), Bundles: bundles},
			server: staticSource{Err: errors.New("not yet"), Bundles: bundles}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			td := mtls.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("cluster.local"))
			state, clientErr, serverErr := handshake(t, mtls.ClientConfig(tc.client, td, mtls.ProtoTCP), mtls.ServerConfig(tc.server, td))
			if tc.wantPeer != "" {
				if clientErr != nil || serverErr != nil {
					t.Fatalf("client: %v, server: %v", clientErr, serverErr)
				}
				id, err := mtls.PeerID(state)
				if err != nil || id.String() != tc.wantPeer {
					t.Errorf("peer = %v, %v; want %s", id, err, tc.wantPeer)
				}
				if state.NegotiatedProtocol != mtls.ProtoTCP || state.Version != tls.VersionTLS13 {
					t.Errorf("ALPN %q, version %x; want %q over TLS 1.3", state.NegotiatedProtocol, state.Version, mtls.ProtoTCP)
				}
				return
			}
			if serverErr == nil || clientErr == nil {
				t.Fatalf("handshake succeeded (client: %v, server: %v); want it refused", clientErr, serverErr)
			}
			if got := mtls.Classify(serverErr); got != tc.wantServer {
				t.Errorf("server failure = %v (%v); want %v", got, serverErr, tc.wantServer)
			}
		})
	}
}

func TestClientRefusesServerOfAnotherTrustDomain(t *testing.T) {
	ca, other := testCA(t, "cluster.local"), testCA(t, "other.org")
	both := x509bundle.NewSet(ca.Bundle(), other.Bundle())
	client := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/a"), Bundles: both}
	server := staticSource{SVID: issue(t, other, "spiffe://other.org/b"), Bundles: both}
	_, clientErr, _ := handshake(t,
		mtls.ClientConfig(client, mtls.AuthorizeSameTrustDomain(client), mtls.ProtoHTTP2),
		mtls.ServerConfig(server, mtls.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("cluster.local"))))
	if got := mtls.Classify(clientErr); got != mtls.FailureOtherTrustDomain {
		t.Errorf("client failure = %v (%v); want %v", got, clientErr, mtls.FailureOtherTrustDomain)
	}
}

// TestClientRefusesAnotherWorkload: a client that expects the identity
// discovery announced refuses a server of the same trust domain that
// presents another, and Classify tells it apart.
func TestClientRefusesAnotherWorkload(t *testing.T) {
	ca := testCA(t, "cluster.local")
	bundles := x509bundle.NewSet(ca.Bundle())
	client := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/ns/shop/sa/frontend"), Bundles: bundles}
	server := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/ns/shop/sa/imposter"), Bundles: bundles}
	want := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")
	_, clientErr, _ := handshake(t,
		mtls.ClientConfig(client, mtls.AuthorizeExpected(want), mtls.ProtoHTTP2),
		mtls.ServerConfig(server, mtls.AuthorizeSameTrustDomain(server)))
	if got := mtls.Classify(clientErr); got != mtls.FailureWrongIdentity || got.String() != "wrong_identity" {
		t.Fatalf("client failure = %v (%v); want %v", got, clientErr, mtls.FailureWrongIdentity)
	}
	if !strings.Contains(clientErr.Error(), `it presented "spiffe://cluster.local/ns/shop/sa/imposter", discovery announced "spiffe://cluster.local/ns/shop/sa/backend"`) {
		t.Errorf("error %q does not name both identities", clientErr)
	}
	// The one expected is let through.
	server.SVID = issue(t, ca, want.String())
	if _, clientErr, serverErr := handshake(t, mtls.ClientConfig(client, mtls.AuthorizeExpected(want), mtls.ProtoHTTP2),
		mtls.ServerConfig(server, mtls.AuthorizeSameTrustDomain(server))); clientErr != nil || serverErr != nil {
		t.Fatalf("the expected identity refused: client %v, server %v", clientErr, serverErr)
	}
}

func TestAuthorizers(t *testing.T) {
	a := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/a")
	b := spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/b")
	x := spiffeid.RequireFromString("spiffe://other.org/ns/a/sa/a")
	for _, tc := range []struct {
		name  string
		authz mtls.Authorizer
		allow []spiffeid.ID
		deny  []spiffeid.ID
	}{
		{"by ID", mtls.AuthorizeID(a), []spiffeid.ID{a}, []spiffeid.ID{b, x}},
		{"one of", mtls.AuthorizeOneOf(a, b), []spiffeid.ID{a, b}, []spiffeid.ID{x}},
		{"member of", mtls.AuthorizeMemberOf(a.TrustDomain()), []spiffeid.ID{a, b}, []spiffeid.ID{x}},
		{"same trust domain", mtls.AuthorizeSameTrustDomain(staticSource{SVID: &x509svid.SVID{ID: b}}), []spiffeid.ID{a, b}, []spiffeid.ID{x}},
	} {
		for _, id := range tc.allow {
			if err := tc.authz(id, nil); err != nil {
				t.Errorf("%s: %s denied: %v", tc.name, id, err)
			}
		}
		for _, id := range tc.deny {
			if err := tc.authz(id, nil); err == nil {
				t.Errorf("%s: %s allowed", tc.name, id)
			}
		}
	}
	noSVID := mtls.AuthorizeSameTrustDomain(staticSource{Err: errors.New("none")})
	if err := noSVID(a, nil); err == nil {
		t.Errorf("same trust domain without an SVID of our own allowed %s", a)
	}
}

func TestReadHello(t *testing.T) {
	ca := testCA(t, "cluster.local")
	src := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/a"), Bundles: x509bundle.NewSet(ca.Bundle())}
	for _, tc := range []struct {
		name   string
		protos []string
		mesh   bool
	}{
		{"a sidecar's", []string{mtls.ProtoHTTP2}, true},
		{"opaque between sidecars", []string{mtls.ProtoTCP}, true},
		{"the application's h2", []string{"h2", "http/1.1"}, false},
		{"no ALPN", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			cfg := mtls.ClientConfig(src, mtls.AuthorizeSameTrustDomain(src), mtls.ProtoTCP)
			cfg.NextProtos = tc.protos
			go func() { _ = tls.Client(a, cfg).Handshake() }()
			mesh, read, err := mtls.ReadHello(b)
			if err != nil {
				t.Fatal(err)
			}
			if mesh != tc.mesh {
				t.Errorf("mesh = %v, want %v", mesh, tc.mesh)
			}
			// What was read is the whole ClientHello record.
			if len(read) < 5 || read[0] != 0x16 || len(read) != 5+int(read[3])<<8+int(read[4]) {
				t.Errorf("read %d bytes, not one whole ClientHello record", len(read))
			}
		})
	}
	if _, _, err := mtls.ReadHello(&oneShot{b: []byte("GET / HTTP/1.1\r\n\r\n")}); err == nil {
		t.Error("ReadHello accepted HTTP")
	}
}

type oneShot struct{ b []byte }

func (o *oneShot) Read(p []byte) (int, error) {
	if len(o.b) == 0 {
		return 0, errors.New("EOF")
	}
	n := copy(p, o.b)
	o.b = o.b[n:]
	return n, nil
}
