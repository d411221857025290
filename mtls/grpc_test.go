package mtls_test

import (
	"crypto/tls"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/pillionmesh/pillion/mtls"
)

// TestGRPCConfigs: the control plane's configs speak TLS 1.3 with ALPN h2
// (gRPC refuses anything else), the server learns the client's ID, and a
// server authorizing its own trust domain refuses a client of another.
func TestGRPCConfigs(t *testing.T) {
	ca, other := testCA(t, "cluster.local"), testCA(t, "other.org")
	both := x509bundle.NewSet(ca.Bundle(), other.Bundle())
	server := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/ns/pillion-system/sa/pillion-discovery"), Bundles: both}
	client := staticSource{SVID: issue(t, ca, "spiffe://cluster.local/ns/shop/sa/web"), Bundles: both}
	stranger := staticSource{SVID: issue(t, other, "spiffe://other.org/ns/shop/sa/web"), Bundles: both}
	serverCfg := mtls.GRPCServerConfig(server, mtls.AuthorizeSameTrustDomain(server))

	state, clientErr, serverErr := handshake(t, mtls.GRPCClientConfig(client, mtls.AuthorizeSameTrustDomain(client)), serverCfg)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("client: %v, server: %v", clientErr, serverErr)
	}
	if state.NegotiatedProtocol != "h2" || state.Version != tls.VersionTLS13 {
		t.Errorf("ALPN %q, version %x; want h2 over TLS 1.3", state.NegotiatedProtocol, state.Version)
	}
	if id, err := mtls.PeerID(state); err != nil || id.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("peer = %v, %v", id, err)
	}

	_, _, serverErr = handshake(t, mtls.GRPCClientConfig(stranger, mtls.AuthorizeMemberOf(ca.Bundle().TrustDomain())), serverCfg)
	if got := mtls.Classify(serverErr); got != mtls.FailureOtherTrustDomain {
		t.Errorf("a client of another trust domain: server failure = %v (%v); want %v", got, serverErr, mtls.FailureOtherTrustDomain)
	}
}
