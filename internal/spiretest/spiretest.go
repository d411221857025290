// Package spiretest runs a real SPIRE server and agents for tests.
//
// One server holds the registration entries; each agent stands for a node
// (a test pod), is attested with its own join token and serves the Workload
// API on its own socket. An entry whose parent is an agent is served only by
// that agent, so the same selector (unix:uid:1337, the proxy's user) yields a
// different SPIFFE ID depending on which agent's socket the workload asks.
//
// Everything a Server or Agent starts is stopped, and its files removed,
// when the test that started it ends.
package spiretest

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pillionmesh/pillion/internal/privileged"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// Version is the SPIRE release the harness is written for; the Makefile's
// SPIRE_VERSION builds it with `make spire`.
const Version = "v1.13.3"

// DefaultX509SVIDTTL is the lifetime of the X509-SVIDs issued for entries
// that Register creates when Server.X509SVIDTTL is zero. It is short so
// that tests can watch a rotation (SPIRE renews at half the lifetime).
const DefaultX509SVIDTTL = time.Minute

const (
	startTimeout   = 30 * time.Second // until a process is healthy
	commandTimeout = 15 * time.Second // for one spire-server CLI call
	pollInterval   = 100 * time.Millisecond
	tokenTTL       = 10 * time.Minute
	maxSocketPath  = 100 // sun_path holds 108 bytes on Linux, 104 elsewhere
)

// Dir returns the folder that holds spire-server and spire-agent: $SPIRE_DIR,
// else .cache/spire-<Version> under the module root. If either binary is
// missing it skips t with how to build them, or fails t under CI=true.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SPIRE_DIR")
	if dir == "" {
		root, err := meshtest.ModuleRoot()
		if err != nil {
			t.Fatalf("spiretest: %v", err)
		}
		dir = filepath.Join(root, ".cache", "spire-"+Version)
	}
	var missing []string
	for _, name := range []string{"spire-server", "spire-agent"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return dir
	}
	msg := fmt.Sprintf("spiretest: no %s in %s: build SPIRE %s with `make spire` (several minutes, once) or point SPIRE_DIR at a folder with both binaries",
		strings.Join(missing, " and "), dir, Version)
	if privileged.InCI() {
		t.Fatal(msg + " (CI=true: failing instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

// Server is a running spire-server with a sqlite datastore, the join_token
// node attestor and an in-memory key manager, listening on 127.0.0.1.
// Its methods may be called from several goroutines; X509SVIDTTL must not
// change while Register runs.
type Server struct {
	TrustDomain spiffeid.TrustDomain
	// Addr is where agents reach the server.
	Addr netip.AddrPort
	// SocketPath is the server's admin API socket (for `spire-server
	// -socketPath`).
	SocketPath string
	// BundlePath is a PEM file with the server's X.509 authorities, as
	// `spire-server bundle show` printed them once the server was healthy.
	BundlePath string
	// X509SVIDTTL is the X509-SVID lifetime of the entries Register creates,
	// in whole seconds; zero means DefaultX509SVIDTTL.
	X509SVIDTTL time.Duration

	bin  string // folder with the SPIRE binaries
	proc *process
}

// Agent is a running spire-agent attested to its Server with its own join
// token, serving the Workload API with the unix workload attestor.
type Agent struct {
	Name string
	// ID is the agent's SPIFFE ID, spiffe://<td>/spire/agent/join_token/<token>:
	// the parent of the entries Register creates for it.
	ID spiffeid.ID
	// SocketPath is the Workload API socket. It and the folders above it are
	// reachable by every user, so a workload running as UID 1337 can use it.
	SocketPath string

	proc *process
}

// Addr is the Workload API address in the form go-spiffe's
// workloadapi.WithAddr and SPIFFE_ENDPOINT_SOCKET expect.
func (a *Agent) Addr() string { return "unix://" + a.SocketPath }

// Stop stops the agent now rather than when the test ends, and waits for it.
func (a *Agent) Stop() { a.proc.Stop() }

// StartServer starts a SPIRE server for trustDomain and waits until it is
// healthy and has a trust bundle. It fails t if that does not happen within
// 30 seconds. The server is stopped when the test ends.
func StartServer(t testing.TB, trustDomain string) *Server {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		t.Fatalf("spiretest: trust domain %q: %v", trustDomain, err)
	}
	s := &Server{TrustDomain: td, bin: Dir(t)}
	data := t.TempDir()
	s.SocketPath = filepath.Join(shortDir(t, "spire-server-"), "api.sock")
	s.BundlePath = filepath.Join(data, "bundle.pem")
	// The port is picked free, then bound by SPIRE: another process may take
	// it in between, so try again (in a fresh data folder) if it did.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("spiretest: %v", err)
		}
		s.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
		dir := filepath.Join(data, strconv.Itoa(attempt))
		conf := filepath.Join(dir, "server.conf")
		if err := writeFile(conf, serverConf(s, dir)); err != nil {
			t.Fatalf("spiretest: %v", err)
		}
		if s.proc, err = start(t, "spire-server", filepath.Join(s.bin, "spire-server"), "run", "-config", conf); err != nil {
			t.Fatal(err)
		}
		err = waitUntil(s.proc, func(ctx context.Context) error {
			_, err := s.command(ctx, "healthcheck")
			return err
		})
		if err == nil {
			break
		}
		if attempt < 3 && s.proc.exited() && strings.Contains(s.proc.out.String(), "address already in use") {
			continue
		}
		t.Fatalf("spiretest: spire-server: %v\n%s", err, s.proc.report())
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	bundle, err := s.command(ctx, "bundle show")
	if err == nil {
		err = writeFile(s.BundlePath, bundle)
	}
	if err != nil {
		t.Fatalf("spiretest: trust bundle: %v\n%s", err, s.proc.report())
	}
	return s
}

// StartAgent generates a join token, starts an agent with it and waits until
// `spire-agent healthcheck` passes, failing t if that takes over 30 seconds.
// name tells the agent apart in messages and folder names. The agent is
// stopped when the test ends. It has no entries yet: see Register.
func (s *Server) StartAgent(t testing.TB, name string) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := s.command(ctx, "token generate", "-ttl", strconv.Itoa(int(tokenTTL/time.Second)))
	if err != nil {
		t.Fatalf("spiretest: agent %s: %v\n%s", name, err, s.proc.report())
	}
	// It prints "Token: <uuid>" and a warning that the token has no SPIFFE
	// ID of its own, which is what we want: the agent's ID names the token.
	var token string
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Token: "); ok {
			token = v
		}
	}
	if token == "" || strings.ContainsAny(token, " /") {
		t.Fatalf("spiretest: agent %s: unexpected `spire-server token generate` output %q", name, out)
	}
	a := &Agent{Name: name}
	if a.ID, err = spiffeid.FromSegments(s.TrustDomain, "spire", "agent", "join_token", token); err != nil {
		t.Fatalf("spiretest: agent %s: join token %q: %v", name, token, err)
	}
	sockDir := shortDir(t, "spire-agent-"+name+"-")
	if err := reachable(sockDir); err != nil {
		t.Fatalf("spiretest: agent %s: %v", name, err)
	}
	a.SocketPath = filepath.Join(sockDir, "api.sock")
	data := t.TempDir()
	conf := filepath.Join(data, "agent.conf")
	if err := writeFile(conf, agentConf(s, a, data, token)); err != nil {
		t.Fatalf("spiretest: agent %s: %v", name, err)
	}
	agentBin := filepath.Join(s.bin, "spire-agent")
	if a.proc, err = start(t, "spire-agent "+name, agentBin, "run", "-config", conf); err != nil {
		t.Fatal(err)
	}
	err = waitUntil(a.proc, func(ctx context.Context) error {
		_, err := run(ctx, agentBin, "healthcheck", "-socketPath", a.SocketPath)
		return err
	})
	if err != nil {
		t.Fatalf("spiretest: agent %s: %v\n%s\n%s", name, err, a.proc.report(), s.proc.report())
	}
	st, err := os.Stat(a.SocketPath)
	if err != nil {
		t.Fatalf("spiretest: agent %s: %v", name, err)
	}
	if st.Mode().Type() != fs.ModeSocket || st.Mode().Perm()&0o006 != 0o006 {
		t.Fatalf("spiretest: agent %s: Workload API socket %s has mode %v, want a socket other users can read and write", name, a.SocketPath, st.Mode())
	}
	return a
}

// Register creates an entry for id whose parent is agent a, so that a
// workload matching every selector ("type:value", e.g. "unix:uid:1337")
// gets id from a's socket and from no other agent's. The agent serves the
// entry after its next sync, within a few seconds: callers retry.
func (s *Server) Register(t testing.TB, a *Agent, id spiffeid.ID, selectors ...string) {
	t.Helper()
	ttl := s.X509SVIDTTL
	if ttl == 0 {
		ttl = DefaultX509SVIDTTL
	}
	switch {
	case ttl < time.Second || ttl%time.Second != 0:
		t.Fatalf("spiretest: X509SVIDTTL %v: want whole seconds", ttl)
	case id.TrustDomain() != s.TrustDomain || a.ID.TrustDomain() != s.TrustDomain:
		t.Fatalf("spiretest: register %s under %s: not in the server's trust domain %s", id, a.ID, s.TrustDomain)
	case len(selectors) == 0:
		t.Fatalf("spiretest: register %s: no selectors", id)
	}
	args := []string{"-parentID", a.ID.String(), "-spiffeID", id.String(), "-x509SVIDTTL", strconv.Itoa(int(ttl / time.Second))}
	for _, sel := range selectors {
		if typ, val, ok := strings.Cut(sel, ":"); !ok || typ == "" || val == "" {
			t.Fatalf("spiretest: register %s: selector %q is not type:value", id, sel)
		}
		args = append(args, "-selector", sel)
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if _, err := s.command(ctx, "entry create", args...); err != nil {
		t.Fatalf("spiretest: register %s under agent %s: %v\n%s", id, a.Name, err, s.proc.report())
	}
}

// command runs `spire-server <sub> -socketPath <admin socket> args...` and
// returns its standard output.
func (s *Server) command(ctx context.Context, sub string, args ...string) (string, error) {
	argv := append(strings.Fields(sub), "-socketPath", s.SocketPath)
	return run(ctx, filepath.Join(s.bin, "spire-server"), append(argv, args...)...)
}

// run runs a SPIRE CLI command and returns its standard output; its error
// carries the command and everything it printed.
func run(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr testpod.SyncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// waitUntil calls check every pollInterval until it succeeds, p exits or
// startTimeout passes, and returns nil or why it gave up.
func waitUntil(p *process, check func(context.Context) error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		err := check(ctx)
		cancel()
		switch {
		case err == nil:
			return nil
		case p.exited():
			return fmt.Errorf("exited before it was healthy; last check: %w", err)
		case time.Now().After(deadline):
			return fmt.Errorf("not healthy after %v: %w", startTimeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// shortDir makes a folder under the system's temporary folder with a name
// short enough for a unix socket inside it, mode 0755 so that other users
// reach the socket, and removes it when the test ends.
func shortDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err == nil {
		t.Cleanup(func() { os.RemoveAll(dir) })
		err = os.Chmod(dir, 0o755)
	}
	if err == nil && len(dir)+len("/api.sock") > maxSocketPath {
		err = fmt.Errorf("%s is too long to hold a unix socket: set TMPDIR to a shorter path", dir)
	}
	if err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	return dir
}

func freePort() (uint16, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port), nil
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o600)
}
