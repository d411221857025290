package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// Mode names, in the order the table shows them.
const (
	Direct  = "direct"
	Pillion = "pillion"
	HAProxy = "haproxy"
)

// Modes lists every mode the harness knows.
func Modes() []string { return []string{Direct, Pillion, HAProxy} }

// Tools are the binaries a run needs.
type Tools struct {
	Pillion string // built from this tree
	Fortio  string // load generator and test server (fortio.org/fortio)
	HAProxy string // the peer proxy (the distribution's package)
}

// env is one run's topology: a node with a client pod and a server pod.
type env struct {
	t              testpod.Cleaner
	tools          Tools
	client, server *testpod.Pod
	dir            string // scratch folder, readable by UID 1337
	holder         *holder
}

// proxy is one running proxy process.
type proxy struct {
	side string // "client" or "server"
	pid  int
	// metrics is the pod whose sidecar serves pillion's Prometheus
	// metrics on :15090; nil for a proxy without them (HAProxy).
	metrics *testpod.Pod
}

// mode puts a pair of proxies (or none) between the pods.
type mode interface {
	// setup installs capture and identities, once per run.
	setup(e *env) error
	// proxiesFor returns the proxies carrying w, started or reconfigured
	// for it if the mode needs that; client side first.
	proxiesFor(e *env, w workload) ([]proxy, error)
}

func newMode(name string) (mode, error) {
	switch name {
	case Direct:
		return directMode{}, nil
	case Pillion:
		return &pillionMode{}, nil
	case HAProxy:
		return &haproxyMode{}, nil
	}
	return nil, fmt.Errorf("unknown mode %q (want %s, %s or %s)", name, Direct, Pillion, HAProxy)
}

// directMode is no proxy and no capture: the limit.
type directMode struct{}

func (directMode) setup(*env) error                           { return nil }
func (directMode) proxiesFor(*env, workload) ([]proxy, error) { return nil, nil }

// pillionMode is the pillion sidecar pair as the injector sets it up:
// capture in both pods, each sidecar with an SVID from `pillion identity`
// over the Workload API, the pods' network in the mesh (mTLS, pooled
// HTTP/2), the TCP workloads' ports declared opaque as an operator would.
type pillionMode struct{ sidecars []*meshtest.Sidecar }

func (m *pillionMode) setup(e *env) error {
	iss := meshtest.StartIssuer(e.t, e.tools.Pillion, time.Hour, e.client, e.server)
	cfg := meshtest.WriteConfig(e.t, "mesh: {networks: "+meshtest.MeshNetworks+"}\n")
	for _, p := range []*testpod.Pod{e.client, e.server} {
		// The default log level: meshtest's sidecars log each connection
		// at debug, which a deployed sidecar does not.
		args := []string{iss.ProxyArg(p), "--config=" + cfg, fmt.Sprintf("--opaque-ports=%d,%d", bulkPort, idlePort), "--log-level=info"}
		m.sidecars = append(m.sidecars, meshtest.Inject(e.t, e.tools.Pillion, p, nil, args))
	}
	return nil
}

// diagnose is the end of each sidecar's log, for an error message.
func (m *pillionMode) diagnose() string {
	var b strings.Builder
	for _, sc := range m.sidecars {
		out := strings.Split(strings.TrimSpace(sc.Proxy.Output()), "\n")
		fmt.Fprintf(&b, "\n%s sidecar, last lines:\n%s", sc.Pod.Name, strings.Join(out[max(0, len(out)-8):], "\n"))
	}
	return b.String()
}

// warnings counts each sidecar's warnings and errors by message and the
// cause at the end of their error, for the log when a workload saw
// connections fail.
func (m *pillionMode) warnings() string {
	var b strings.Builder
	for _, sc := range m.sidecars {
		counts := map[string]int{}
		var order []string
		for _, l := range sc.Logs() {
			if l.Level != "warn" && l.Level != "error" {
				continue
			}
			key := l.Msg
			if l.Error != "" {
				key += ": …" + l.Error[strings.LastIndex(l.Error, ": ")+1:]
			}
			if counts[key] == 0 {
				order = append(order, key)
			}
			counts[key]++
		}
		for _, k := range order {
			fmt.Fprintf(&b, "    %s sidecar: %d× %s\n", sc.Pod.Name, counts[k], k)
		}
	}
	return b.String()
}

func (m *pillionMode) proxiesFor(*env, workload) ([]proxy, error) {
	var ps []proxy
	for i, side := range []string{"client", "server"} {
		sc := m.sidecars[i]
		ps = append(ps, proxy{side: side, pid: sc.Proxy.PID(), metrics: sc.Pod})
	}
	return ps, nil
}

// issueSVIDs writes an SVID for each pod with `pillion identity issue`
// into dir/<pod>/, readable by the proxies' UID, and returns the CA bundle.
func issueSVIDs(e *env, pods ...*testpod.Pod) (string, error) {
	ca := filepath.Join(e.dir, "ca")
	for _, p := range pods {
		out := filepath.Join(e.dir, p.Name)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := runCmd(ctx, e.tools.Pillion, "identity", "issue", "--dir="+ca, "--trust-domain="+meshtest.TrustDomain,
			"--id="+meshtest.PodID(p), "--out="+out)
		cancel()
		if err != nil {
			return "", err
		}
		if err := chownTree(out, testpod.ProxyUser); err != nil {
			return "", err
		}
	}
	return filepath.Join(e.dir, pods[0].Name, "bundle.pem"), nil
}

func chownTree(dir string, u testpod.User) error {
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(path, int(u.UID), int(u.GID))
	})
}
