package mtls_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

// Two sidecars of one trust domain: the client asks for an opaque TCP
// stream, the server learns who is calling.
func ExampleServerConfig() {
	dir, _ := os.MkdirTemp("", "ca-")
	defer os.RemoveAll(dir)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, _, _ := issuer.OpenCA(dir, td, time.Hour)
	bundles := x509bundle.NewSet(ca.Bundle())
	svid := func(id string) mtls.Source {
		s, _ := ca.Issue(spiffeid.RequireFromString(id), time.Hour)
		return svidtest.Source{SVID: s, Bundles: bundles}
	}
	server := svid("spiffe://cluster.local/ns/shop/sa/backend")
	client := svid("spiffe://cluster.local/ns/shop/sa/frontend")

	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, mtls.ClientConfig(client, mtls.AuthorizeSameTrustDomain(client), mtls.ProtoTCP))
		_ = c.Handshake()
	}()
	s := tls.Server(b, mtls.ServerConfig(server, mtls.AuthorizeMemberOf(td)))
	if err := s.Handshake(); err != nil {
		fmt.Println(err)
		return
	}
	peer, _ := mtls.PeerID(s.ConnectionState())
	fmt.Println(peer, s.ConnectionState().NegotiatedProtocol)
	// Output: spiffe://cluster.local/ns/shop/sa/frontend pillion/tcp
}

// A failed handshake is classified for the counters.
func ExampleClassify() {
	_, err := x509bundle.NewSet().GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org"))
	fmt.Println(mtls.Classify(err))
	// Output: other_trust_domain
}
