package mtls_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

// TestWorkloadSource starts the source before the Workload API exists (a
// sidecar starting before its node agent), then starts `pillion
// identity`'s server, and watches the SVID arrive and rotate.
func TestWorkloadSource(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	src, err := mtls.NewWorkloadSource(sock, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Ready(); err == nil || !strings.Contains(err.Error(), "unix://"+sock) {
		t.Fatalf("Ready before the Workload API is up = %v; want an error naming unix://%s", err, sock)
	}
	if _, err := src.GetX509SVID(); err == nil {
		t.Fatal("an SVID before the Workload API is up")
	}

	ca := svidtest.CA(t, "", "cluster.local")
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/a")
	srv, err := issuer.Listen(ca, issuer.Config{Sockets: []issuer.Socket{{Path: sock, ID: id}}, SVIDTTL: 2 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }()

	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := src.WaitReady(wctx); err != nil {
		t.Fatalf("no SVID 10s after the Workload API came up: %v (%v)", err, src.Ready())
	}
	first, err := src.GetX509SVID()
	if err != nil || first.ID != id {
		t.Fatalf("SVID %v, %v; want %s", first, err, id)
	}
	if _, err := src.GetX509BundleForTrustDomain(id.TrustDomain()); err != nil {
		t.Fatalf("no bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Error("a bundle for other.org")
	}
	// SVIDs live 2 s and are renewed at half life.
	waitFor(t, func() bool { s, _ := src.GetX509SVID(); return serial(s) != serial(first) })
}
