//go:build !lean

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/internal/svidtest"
	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/mtls/issuer"
)

const testDiscoveryID = "spiffe://cluster.local/ns/pillion-system/sa/pillion-discovery"

// writeSVIDFiles writes an SVID for id from ca and ca's bundle to a new
// folder, as --svid-cert, --svid-key and --svid-bundle read them.
func writeSVIDFiles(t *testing.T, ca *issuer.CA, id string) issuer.Files {
	t.Helper()
	files, err := issuer.WriteFiles(t.TempDir(), svidtest.Issue(t, ca, id), ca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// writeKubeconfig writes a kubeconfig for an API server at server that is
// never there.
func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	return writeFile(t, "kubeconfig", `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+server+`"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`)
}

// outOfCluster makes the test's process look as if it ran outside a
// cluster, with no $KUBECONFIG and no Workload API in its environment.
func outOfCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	t.Setenv("KUBECONFIG", "")
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
}

// TestDiscoveryBadFlags: each bad flag exits 2 with one line naming it,
// and nothing is left listening.
func TestDiscoveryBadFlags(t *testing.T) {
	outOfCluster(t)
	files := writeSVIDFiles(t, svidtest.CA(t, "", "cluster.local"), testDiscoveryID)
	id := []string{"--svid-cert=" + files.SVID, "--svid-key=" + files.Key, "--svid-bundle=" + files.Bundle}
	kc := "--kubeconfig=" + writeKubeconfig(t, "https://127.0.0.1:1")
	missing := filepath.Join(t.TempDir(), "missing")
	garbage := writeFile(t, "garbage", "not: [a kubeconfig")
	ports := freePorts(t, 2)
	port, mport := fmt.Sprint(ports[0]), fmt.Sprint(ports[1])
	for _, tt := range []struct {
		name string
		args []string
		env  string // $KUBECONFIG
		want string
	}{
		{"port 0", []string{"--port=0"}, "", "--port: 0 is not a port number (1-65535)"},
		{"metrics port too big", []string{"--metrics-port=65536"}, "", "--metrics-port: 65536 is not a port number (1-65535)"},
		{"metrics port is the port", []string{"--metrics-port=" + port}, "", "--metrics-port: " + port + " is also the --port"},
		{"max subscriptions 0", []string{"--max-subscriptions=0"}, "", "--max-subscriptions: 0: must be positive"},
		{"coalesce 0", []string{"--coalesce=0s"}, "", "--coalesce: 0s: must be positive"},
		{"log format", []string{"--log-format=xml"}, "", `--log-format: "xml": want json or console`},
		{"bad duration", []string{"--shutdown-timeout=soon"}, "", `invalid value "soon" for flag -shutdown-timeout: parse error`},
		{"an argument", []string{"extra"}, "", `unexpected argument "extra"`},
		{"no identity", []string{kc}, "",
			"--spiffe-socket: missing: discovery serves in mTLS only; give --spiffe-socket (or $SPIFFE_ENDPOINT_SOCKET) or --svid-cert, --svid-key and --svid-bundle"},
		{"two identities", append([]string{kc, "--spiffe-socket=/run/agent.sock"}, id...), "",
			"--spiffe-socket and --svid-cert/--svid-key/--svid-bundle: give one identity source, not both"},
		{"a key without its certificate", []string{kc, "--svid-key=" + files.Key, "--svid-bundle=" + files.Bundle}, "",
			"--svid-cert: missing: --svid-cert, --svid-key and --svid-bundle go together"},
		{"missing kubeconfig", append([]string{"--kubeconfig=" + missing}, id...), "",
			"--kubeconfig: stat " + missing + ": no such file or directory"},
		{"garbage kubeconfig", append([]string{"--kubeconfig=" + garbage}, id...), "",
			"--kubeconfig: error loading config file \"" + garbage + "\": yaml: line 1: did not find expected ',' or ']'"},
		{"not in a cluster, no $KUBECONFIG", id, "", "--kubeconfig: missing: not running in a cluster, and $KUBECONFIG is empty"},
		{"garbage $KUBECONFIG", id, garbage,
			"--kubeconfig: $KUBECONFIG=" + garbage + ": error loading config file \"" + garbage + "\": yaml: line 1: did not find expected ',' or ']'"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tt.env)
			args := append([]string{"discovery", "--address=127.0.0.1", "--port=" + port, "--metrics-port=" + mport}, tt.args...)
			wantUsageError(t, args, "pillion discovery: "+tt.want)
			assertNotListening(t, ports...)
		})
	}
}

func TestDiscoveryHelp(t *testing.T) {
	code, stdout, stderr := runCmd("discovery", "--help")
	if code != 0 || stderr != "" {
		t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	for _, want := range []string{"Usage: pillion discovery [flags]", "-kubeconfig", "-port uint", "(default 15012)", "(default 15014)",
		"-spiffe-socket", "-svid-cert", "-max-subscriptions", "/healthz/ready"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help does not mention %q:\n%s", want, stdout)
		}
	}
}

// TestDiscoveryNotSynced runs `pillion discovery` against an API server
// that is not there: it serves, but is not ready and refuses streams with
// Unavailable until its informers sync; on cancel it exits 0 and closes
// its ports.
func TestDiscoveryNotSynced(t *testing.T) {
	outOfCluster(t)
	ca := svidtest.CA(t, "", "cluster.local")
	files := writeSVIDFiles(t, ca, testDiscoveryID)
	ports := freePorts(t, 3) // the third: where no API server listens
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"discovery", "--address=127.0.0.1", fmt.Sprintf("--port=%d", ports[0]), fmt.Sprintf("--metrics-port=%d", ports[1]),
			"--kubeconfig=" + writeKubeconfig(t, fmt.Sprintf("https://127.0.0.1:%d", ports[2])),
			"--svid-cert=" + files.SVID, "--svid-key=" + files.Key, "--svid-bundle=" + files.Bundle}, &stdout, &stderr)
	}()
	exited := false
	t.Cleanup(func() {
		if !exited {
			cancel()
			<-done
		}
	})

	base := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	var ready string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		code, body, err := get(base + "/healthz/ready")
		if err == nil {
			ready = fmt.Sprintf("%d %s", code, body)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz/ready: %v\n%s", err, stderr.String())
		}
	}
	if want := "503 the Kubernetes informers have not synced yet\n"; ready != want {
		t.Errorf("/healthz/ready = %q, want %q", ready, want)
	}
	if _, body, err := get(base + "/metrics"); err != nil || !strings.Contains(body, "pillion_discovery_streams 0") {
		t.Errorf("/metrics (%v) has no pillion_discovery_streams 0:\n%.500s", err, body)
	}

	src := svidtest.SourceFor(t, ca, "spiffe://cluster.local/ns/shop/sa/web")
	creds := credentials.NewTLS(mtls.GRPCClientConfig(src, mtls.AuthorizeID(spiffeid.RequireFromString(testDiscoveryID))))
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoveryv1.NewDiscoveryClient(conn).Watch(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "discovery: not ready: the Kubernetes informers have not synced yet" {
		t.Errorf("Watch before the informers synced: %v, want Unavailable, not ready", err)
	}

	cancel()
	select {
	case code := <-done:
		exited = true
		if code != 0 {
			t.Errorf("exit %d, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("pillion discovery did not stop within 15s of its context ending")
	}
	assertNotListening(t, ports[0], ports[1])
	for _, want := range []string{`"msg":"discovery serving"`, `"msg":"discovery stopping"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the log has no %s:\n%s", want, stderr.String())
		}
	}
}

func get(url string) (int, string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}
