package issuer_test

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/mtls/issuer"
)

// A CA is opened (created on first use) in a folder, issues an SVID, and
// its bundle verifies the SVID.
func ExampleCA_Issue() {
	dir, err := os.MkdirTemp("", "pillion-ca-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, created, err := issuer.OpenCA(dir, td, 24*time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	svid, err := ca.Issue(spiffeid.RequireFromPath(td, "/ns/shop/sa/web"), time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created:", created)
	fmt.Println("verified:", id)
	fmt.Println("CA:", ca.Certificate().URIs[0])
	// Output:
	// created: true
	// verified: spiffe://cluster.local/ns/shop/sa/web
	// CA: spiffe://cluster.local
}

// An Authority keeps the CA folder on schedule; its State is what a server
// signs with and the bundle it serves.
func ExampleOpenAuthority() {
	dir, err := os.MkdirTemp("", "pillion-ca-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	auth, _, err := issuer.OpenAuthority(dir, td, 24*time.Hour, zap.NewNop())
	if err != nil {
		log.Fatal(err)
	}
	// A server runs auth.Run(ctx) beside issuer.Listen(auth, ...).
	keys := auth.Current()
	svid, err := keys.Active.Issue(spiffeid.RequireFromPath(td, "/ns/shop/sa/web"), time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, keys.X509Bundle()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("CAs in the bundle:", len(keys.Bundle))
	fmt.Println("next CA prepared:", keys.Next != nil)
	// Output:
	// CAs in the bundle: 1
	// next CA prepared: false
}
