// Package meshtest puts pillion into test pods: it builds the binary, runs
// `pillion init` in a pod and starts `pillion proxy` there as the proxy's
// user, and reads back, from the proxy's log (at debug level), which
// connections it saw. The
// end-to-end tests and `make demo` share it.
package meshtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// Build compiles ./cmd/pillion from the module at root, with the build
// tags given (lean: the sidecar image's binary), into a fresh directory
// that the proxy's user can read, and returns the binary's path and a func
// that removes it.
func Build(root string, tags ...string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "pillion-bin-")
	if err != nil {
		return "", nil, err
	}
	remove := func() { os.RemoveAll(dir) }
	// MkdirTemp makes 0700; UID 1337 must be able to run the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		remove()
		return "", nil, err
	}
	bin := filepath.Join(dir, "pillion")
	cmd := exec.Command("go", "build", "-tags="+strings.Join(tags, ","), "-o", bin, "./cmd/pillion")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("go build ./cmd/pillion: %w\n%s", err, out)
	}
	return bin, remove, nil
}

// ModuleRoot walks up from the working directory to the folder with go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("meshtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Sidecar is a pod with pillion's capture installed and its proxy running.
type Sidecar struct {
	Pod   *testpod.Pod
	Bin   string
	Init  string // what `pillion init` printed
	Proxy *testpod.Process
}

// Inject runs `pillion init initArgs...` in pod as root, then starts
// `pillion proxy proxyArgs...` as UID/GID 1337 and waits until it is ready.
func Inject(t testpod.Cleaner, bin string, pod *testpod.Pod, initArgs, proxyArgs []string) *Sidecar {
	t.Helper()
	return InjectUntil(t, bin, pod, initArgs, proxyArgs, "ready")
}

// InjectUntil is Inject that waits for the proxy to log msg rather than
// "ready".
func InjectUntil(t testpod.Cleaner, bin string, pod *testpod.Pod, initArgs, proxyArgs []string, msg string) *Sidecar {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := pod.Exec(ctx, bin, append([]string{"init"}, initArgs...)...)
	if err != nil {
		t.Fatalf("meshtest: pillion init in %s: %v", pod.Name, err)
	}
	sc := &Sidecar{Pod: pod, Bin: bin, Init: out}
	sc.StartProxyUntil(t, msg, proxyArgs...)
	return sc
}

// StartProxy starts the proxy (again) and waits until it logs "ready".
func (sc *Sidecar) StartProxy(t testpod.Cleaner, args ...string) {
	t.Helper()
	sc.StartProxyUntil(t, "ready", args...)
}

// StartProxyUntil starts the proxy (again) and waits until it logs a line
// whose message is msg. The proxy logs at debug level, where its line per
// connection is (Connections, WaitConnection), unless args say
// --log-level themselves (the last one given wins).
func (sc *Sidecar) StartProxyUntil(t testpod.Cleaner, msg string, args ...string) {
	t.Helper()
	sc.Proxy = sc.Pod.Start(t, testpod.ProxyUser, sc.Bin, append([]string{"proxy", "--log-level=debug"}, args...)...)
	deadline := time.After(15 * time.Second)
	for {
		for _, l := range sc.Logs() {
			if l.Msg == msg {
				return
			}
		}
		select {
		case <-sc.Proxy.Done():
			t.Fatalf("meshtest: proxy in %s exited: %v\n%s", sc.Pod.Name, sc.Proxy.Wait(), sc.Proxy.Output())
		case <-deadline:
			t.Fatalf("meshtest: proxy in %s did not log %q in 15s:\n%s", sc.Pod.Name, msg, sc.Proxy.Output())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// LogLine is one line of the proxy's JSON log; fields the tests use.
type LogLine struct {
	Level         string `json:"level"`
	Msg           string `json:"msg"`
	Direction     string `json:"direction"`
	Src           string `json:"src"`
	Dst           string `json:"dst"`
	Upstream      string `json:"upstream"`
	Protocol      string `json:"protocol"`
	Detection     string `json:"detection"`
	BytesSent     int64  `json:"bytes_sent"`
	BytesReceived int64  `json:"bytes_received"`
	Error         string `json:"error"`

	// Access log lines ("access").
	Method     string  `json:"method"`
	Authority  string  `json:"authority"`
	Path       string  `json:"path"`
	Code       int     `json:"code"`
	Flags      string  `json:"flags"`
	UpstreamMS float64 `json:"upstream_ms"`
	RequestID  string  `json:"request_id"`
	Peer       string  `json:"peer"`

	// mTLS and identity lines.
	MTLS     string `json:"mtls"`   // the ALPN protocol of a connection between sidecars
	Reason   string `json:"reason"` // why a handshake failed
	SpiffeID string `json:"spiffe_id"`
	Serial   string `json:"serial"`
	Issuer   string `json:"issuer"` // the signing CA's key ID
}

// Logs parses what the proxy has logged so far; lines that are not JSON
// are skipped.
func (sc *Sidecar) Logs() []LogLine {
	var lines []LogLine
	s := bufio.NewScanner(strings.NewReader(sc.Proxy.Output()))
	for s.Scan() {
		var l LogLine
		if json.Unmarshal(s.Bytes(), &l) == nil {
			lines = append(lines, l)
		}
	}
	return lines
}

// Connections returns the connections the proxy finished relaying in
// direction dir ("inbound" or "outbound") to original destination dst
// (host:port), in the order it logged them.
func (sc *Sidecar) Connections(dir, dst string) []LogLine {
	var out []LogLine
	for _, l := range sc.Logs() {
		if l.Msg == "connection" && l.Direction == dir && l.Dst == dst {
			out = append(out, l)
		}
	}
	return out
}

// WaitConnection waits up to timeout for the proxy to log a finished
// connection in dir to dst and returns the first; ok is false if none came.
func (sc *Sidecar) WaitConnection(dir, dst string, timeout time.Duration) (l LogLine, ok bool) {
	return sc.WaitLog(func(l LogLine) bool {
		return l.Msg == "connection" && l.Direction == dir && l.Dst == dst
	}, timeout)
}

// WaitLog waits up to timeout for a log line that match accepts and returns
// the first; ok is false if none came. The proxy's output reaches us through
// a pipe, so a line may arrive a little after the event it records.
func (sc *Sidecar) WaitLog(match func(LogLine) bool, timeout time.Duration) (l LogLine, ok bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range sc.Logs() {
			if match(l) {
				return l, true
			}
		}
		if time.Now().After(deadline) {
			return LogLine{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// MeshNetworks are the pod subnets of testpod nodes, for the config's
// mesh section.
const MeshNetworks = "[198.18.0.0/24, \"fd00:ca7::/64\"]"

// WriteConfig writes a proxy config file that the proxy's UID can read and
// the test can rewrite, and returns its path. It is removed with the test.
func WriteConfig(t testpod.Cleaner, yaml string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pillion-config-")
	if err != nil {
		t.Fatalf("meshtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("meshtest: %v", err)
	}
	path := filepath.Join(dir, "pillion.yaml")
	UpdateConfig(t, path, yaml)
	return path
}

// UpdateConfig replaces the config file at path atomically (write, then
// rename), as a ConfigMap update does.
func UpdateConfig(t testpod.Cleaner, path, yaml string) {
	t.Helper()
	if err := ReplaceConfig(path, yaml); err != nil {
		t.Fatalf("%v", err)
	}
}

// ReplaceConfig is UpdateConfig for goroutines other than the test's: it
// returns the error.
func ReplaceConfig(path, yaml string) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		return fmt.Errorf("meshtest: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("meshtest: %w", err)
	}
	return nil
}
