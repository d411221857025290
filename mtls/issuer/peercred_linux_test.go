package issuer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"

	"github.com/pillionmesh/pillion/internal/privileged"
)

// fetchEnv, when set, makes TestHelperFetch a Workload API client of the
// socket it names instead of a test.
const fetchEnv = "PILLION_ISSUER_FETCH"

// TestHelperFetch is the client process of TestWorkloadAPIOtherUIDs: it
// prints the ID it got, or the status code it was refused with.
func TestHelperFetch(t *testing.T) {
	path := os.Getenv(fetchEnv)
	if path == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+path))
	if err != nil {
		fmt.Printf("RESULT %v\n", status.Code(err))
		return
	}
	fmt.Printf("RESULT %v\n", svid.ID)
}

// TestWorkloadAPIOtherUIDs: processes running as other users share one
// socket and each gets the ID of its own UID, which the kernel reports.
func TestWorkloadAPIOtherUIDs(t *testing.T) {
	privileged.Require(t)
	dir := sockDir(t)
	// The callers must reach the socket and run the test binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "node", "api.sock")
	web, db := spiffeid.RequireFromPath(testTD, "/ns/shop/sa/web"), spiffeid.RequireFromPath(testTD, "/ns/shop/sa/db")
	serve(t, Config{Sockets: []Socket{{Path: path}}, UIDs: map[uint32]spiffeid.ID{1337: web, 1338: db}})

	for uid, want := range map[uint32]string{1337: web.String(), 1338: db.String(), 4242: "PermissionDenied"} {
		cmd := exec.Command(bin, "-test.run=^TestHelperFetch$")
		cmd.Env = append(os.Environ(), fetchEnv+"="+path)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as UID %d: %v\n%s", uid, err, out)
		}
		got := ""
		for _, line := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(line, "RESULT "); ok {
				got = r
			}
		}
		if got != want {
			t.Errorf("client as UID %d got %q, want %q\n%s", uid, got, want, out)
		}
	}
}
