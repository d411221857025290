package issuer_test

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

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
