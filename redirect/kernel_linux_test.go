package redirect

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// These tests run against the real kernel: each in its own network
// namespace (a testpod pod), through the real iptables and ip6tables.

func newPod(t *testing.T) *testpod.Pod {
	t.Helper()
	privileged.Require(t, "ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save")
	return testpod.NewNode(t).AddPod(t, "app")
}

func families() []Family { return []Family{IPv4, IPv6} }

// save returns the pod's normalised `<family>-save`, of one table if
// table is not empty.
func save(t *testing.T, pod *testpod.Pod, f Family, table string) string {
	t.Helper()
	args := []string{}
	if table != "" {
		args = append(args, "-t", table)
	}
	out, err := pod.Exec(context.Background(), f.command()+"-save", args...)
	if err != nil {
		t.Fatal(err)
	}
	return NormalizeSave(out)
}

// saves returns save(t, pod, f, table) for both families.
func saves(t *testing.T, pod *testpod.Pod, table string) map[Family]string {
	t.Helper()
	return map[Family]string{IPv4: save(t, pod, IPv4, table), IPv6: save(t, pod, IPv6, table)}
}

// targets builds both families' targets for cfg; wrap, if not nil,
// wraps each family's real tables.
func targets(t *testing.T, cfg Config, wrap func(Tables) Tables) []Target {
	t.Helper()
	var out []Target
	for _, f := range families() {
		tb, err := NewTables(f)
		if err != nil {
			t.Fatal(err)
		}
		if wrap != nil {
			tb = wrap(tb)
		}
		out = append(out, Target{NewPlan(cfg, f), tb})
	}
	return out
}

// inPod runs Apply or Cleanup inside the pod's network namespace.
func inPod(t *testing.T, pod *testpod.Pod, op func(context.Context, ...Target) ([]Report, error), tgs []Target) ([]Report, error) {
	t.Helper()
	var reps []Report
	var opErr error
	if err := pod.Run(func() error {
		reps, opErr = op(context.Background(), tgs...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return reps, opErr
}

// addUserRules puts rules that are not pillion's into both families'
// tables: in nat PREROUTING and OUTPUT, a user chain, and the filter table.
func addUserRules(t *testing.T, pod *testpod.Pod) {
	t.Helper()
	for _, f := range families() {
		for _, args := range [][]string{
			{"-t", "nat", "-N", "USER_CHAIN"},
			{"-t", "nat", "-A", "USER_CHAIN", "-p", "udp", "-j", "RETURN"},
			{"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "2222", "-m", "comment", "--comment", "user: ssh", "-j", "RETURN"},
			{"-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "USER_CHAIN"},
			{"-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"},
		} {
			if _, err := pod.Exec(context.Background(), f.command(), args...); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// splitOwned separates pillion's lines of a normalised save from the rest.
func splitOwned(save string) (pillion, others []string) {
	for line := range strings.Lines(save) {
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, ":"+ChainPrefix) || strings.HasPrefix(line, "-A "+ChainPrefix) ||
			strings.Contains(line, `--comment "`+CommentPrefix) {
			pillion = append(pillion, line)
		} else {
			others = append(others, line)
		}
	}
	return pillion, others
}

// checkInstalled checks that the pod's tables hold exactly plans for cfg
// on top of the user's rules in before, which are untouched.
func checkInstalled(t *testing.T, pod *testpod.Pod, cfg Config, before map[Family]string) {
	t.Helper()
	for _, f := range families() {
		got := save(t, pod, f, "")
		gotOurs, gotTheirs := splitOwned(got)
		wantOurs, _ := splitOwned(NewPlan(cfg, f).Save())
		_, wantTheirs := splitOwned(before[f])
		if diff := cmp.Diff(wantOurs, gotOurs); diff != "" {
			t.Errorf("%s: pillion's rules differ from the plan (-want +got):\n%s", f, diff)
		}
		if diff := cmp.Diff(wantTheirs, gotTheirs); diff != "" {
			t.Errorf("%s: other rules were changed (-want +got):\n%s", f, diff)
		}
	}
}

func TestKernelApplyFresh(t *testing.T) {
	pod := newPod(t)
	cfg := mustConfig(t, func(f *Flags) {
		f.ExcludeInboundPorts = "22"
		f.ExcludeOutboundPorts = "5432"
		f.ExcludeOutboundIPRanges = "10.0.0.0/8,fd00::/8,169.254.169.254"
	})
	reps, err := inPod(t, pod, Apply, targets(t, cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	want := []Report{
		{Family: IPv4, Outcome: Installed, ChainsAdded: 4, RulesAdded: 19},
		{Family: IPv6, Outcome: Installed, ChainsAdded: 4, RulesAdded: 18},
	}
	if diff := cmp.Diff(want, reps); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	// The plan's rendering is exactly what the kernel holds, text for text.
	for _, f := range families() {
		if diff := cmp.Diff(NewPlan(cfg, f).Save(), save(t, pod, f, "nat")); diff != "" {
			t.Errorf("%s: iptables-save differs from Plan.Save (-plan +kernel):\n%s", f, diff)
		}
	}
}

func TestKernelLifecycle(t *testing.T) {
	pod := newPod(t)
	addUserRules(t, pod)
	before := saves(t, pod, "")
	cfg := defaultConfig()

	reps, err := inPod(t, pod, Apply, targets(t, cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	if reps[0].Outcome != Installed || reps[1].Outcome != Installed {
		t.Errorf("first Apply: %v, want Installed twice", reps)
	}
	checkInstalled(t, pod, cfg, before)
	installed := saves(t, pod, "")

	t.Run("apply again changes nothing", func(t *testing.T) {
		reps, err := inPod(t, pod, Apply, targets(t, cfg, nil))
		if err != nil {
			t.Fatal(err)
		}
		want := []Report{{Family: IPv4, Outcome: Unchanged}, {Family: IPv6, Outcome: Unchanged}}
		if diff := cmp.Diff(want, reps); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(installed, saves(t, pod, "")); diff != "" {
			t.Errorf("tables changed (-before +after):\n%s", diff)
		}
	})

	other := mustConfig(t, func(f *Flags) {
		f.OutboundPort, f.IncludeInboundPorts = "7001", "8080,9090"
		f.ExcludeOutboundIPRanges = "192.0.2.0/24,2001:db8::/32"
	})
	t.Run("apply with other flags replaces", func(t *testing.T) {
		reps, err := inPod(t, pod, Apply, targets(t, other, nil))
		if err != nil {
			t.Fatal(err)
		}
		want := []Report{
			{Family: IPv4, Outcome: Replaced, ChainsAdded: 4, RulesAdded: 17, ChainsRemoved: 4, RulesRemoved: 15},
			{Family: IPv6, Outcome: Replaced, ChainsAdded: 4, RulesAdded: 17, ChainsRemoved: 4, RulesRemoved: 15},
		}
		if diff := cmp.Diff(want, reps); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		checkInstalled(t, pod, other, before)
	})

	t.Run("cleanup restores the tables", func(t *testing.T) {
		// Cleanup does not depend on the flags of the install.
		reps, err := inPod(t, pod, Cleanup, targets(t, cfg, nil))
		if err != nil {
			t.Fatal(err)
		}
		want := []Report{
			{Family: IPv4, Outcome: Removed, ChainsRemoved: 4, RulesRemoved: 17},
			{Family: IPv6, Outcome: Removed, ChainsRemoved: 4, RulesRemoved: 17},
		}
		if diff := cmp.Diff(want, reps); diff != "" {
			t.Errorf("reports (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(before, saves(t, pod, "")); diff != "" {
			t.Errorf("tables differ from before Apply (-before +after):\n%s", diff)
		}
	})

	t.Run("cleanup again is a no-op", func(t *testing.T) {
		reps, err := inPod(t, pod, Cleanup, targets(t, cfg, nil))
		want := []Report{{Family: IPv4, Outcome: NotInstalled}, {Family: IPv6, Outcome: NotInstalled}}
		if diff := cmp.Diff(want, reps); err != nil || diff != "" {
			t.Errorf("Cleanup: %v (-want +got):\n%s", err, diff)
		}
		if diff := cmp.Diff(before, saves(t, pod, "")); diff != "" {
			t.Errorf("tables changed (-before +after):\n%s", diff)
		}
	})
}

// TestKernelRollback makes every mutating call of an Apply fail in turn,
// for a fresh install and for the replacement of an install with other
// flags, and checks that each failed Apply leaves both families' tables
// exactly as they were.
func TestKernelRollback(t *testing.T) {
	pod := newPod(t)
	addUserRules(t, pod)
	old := mustConfig(t, func(f *Flags) { f.ExcludeOutboundPorts = "22" })
	tests := []struct {
		name      string
		installed *Config // installed before the failing Apply
		steps     int     // mutating calls of a successful Apply
	}{
		// 4 chains + 15 rules per family.
		{"fresh install", nil, 2 * 19},
		// per family: delete 2 hooks, flush 4 chains, delete 4, then install.
		{"replace", &old, 2 * (2 + 4 + 4 + 19)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.installed != nil {
				if _, err := inPod(t, pod, Apply, targets(t, *tt.installed, nil)); err != nil {
					t.Fatal(err)
				}
			}
			before := saves(t, pod, "")
			// Every call of the IPv4 half, then a few of the IPv6 half
			// (same code; what matters is that IPv4 is undone too), then
			// one past the end, which must succeed.
			half := tt.steps / 2
			fails := []int{half + 1, half + half/2, tt.steps}
			for n := 1; n <= half; n++ {
				fails = append(fails, n)
			}
			for _, n := range append(fails, tt.steps+1) {
				calls := 0
				wrap := func(tb Tables) Tables { return failing{Tables: tb, calls: &calls, failAt: n} }
				_, err := inPod(t, pod, Apply, targets(t, defaultConfig(), wrap))
				if n > tt.steps {
					if err != nil || calls != tt.steps {
						t.Errorf("Apply without failure: %v after %d mutating calls, want success after %d", err, calls, tt.steps)
					}
					break
				}
				if err == nil {
					t.Fatalf("Apply succeeded although call %d failed", n)
				}
				if !strings.HasSuffix(err.Error(), "(this run's changes were undone)") {
					t.Errorf("call %d failed: error %q does not say the changes were undone", n, err)
				}
				if diff := cmp.Diff(before, saves(t, pod, "")); diff != "" {
					t.Fatalf("call %d failed (%v): tables not restored (-before +after):\n%s", n, err, diff)
				}
			}
			if _, err := inPod(t, pod, Cleanup, targets(t, defaultConfig(), nil)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// proxyGIDOnly runs with the proxy's GID but not its UID.
var proxyGIDOnly = testpod.User{UID: 1000, GID: 1337}

// TestKernelCapture checks that the installed rules steer real
// connections where the package documentation says: which listener in the
// pod accepts each connection.
func TestKernelCapture(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv", "bash", "curl")
	node := testpod.NewNode(t)
	pod, peer := node.AddPod(t, "app"), node.AddPod(t, "peer")
	if _, err := inPod(t, pod, Apply, targets(t, defaultConfig(), nil)); err != nil {
		t.Fatal(err)
	}
	if err := pod.Run(func() error { _, err := AddInboundSource(); return err }); err != nil {
		t.Fatal(err)
	}
	accepted := listenAll(t, pod)
	self4, self6 := pod.IPv4.String(), "["+pod.IPv6.String()+"]"
	tests := []struct {
		name string
		from *testpod.Pod
		user testpod.User
		src  string // the local address to connect from; "" for the kernel's choice
		dst  string
		want string // listener that accepts; "" for none (nothing listens there)
	}{
		{"app to the world is captured", pod, testpod.Root, "", "198.18.0.1:80", "outbound sidecar"},
		{"app to the world over IPv6 is captured", pod, testpod.Root, "", "[fd00:ca7::1]:80", "outbound sidecar"},
		{"app to localhost is not captured", pod, testpod.Root, "", "127.0.0.1:8080", "app"},
		{"app to ::1 is not captured", pod, testpod.Root, "", "[::1]:8080", "app"},
		{"app to its own pod IP goes through the outbound sidecar", pod, testpod.Root, "", self4 + ":8080", "outbound sidecar"},
		{"proxy to the world is not captured", pod, testpod.ProxyUser, "", "198.18.0.1:80", ""},
		{"proxy to localhost is not captured", pod, testpod.ProxyUser, "", "127.0.0.1:8080", "app"},
		{"proxy to its own pod IP goes inbound", pod, testpod.ProxyUser, "", self4 + ":8080", "inbound sidecar"},
		{"proxy to its own pod IPv6 goes inbound", pod, testpod.ProxyUser, "", self6 + ":8080", "inbound sidecar"},
		{"proxy to its own pod IP, sidecar port, is not redirected", pod, testpod.ProxyUser, "", self4 + ":15021", "health"},
		// Rules 3 and 4: a process with the proxy's GID but another UID.
		{"proxy GID to the world is not captured", pod, proxyGIDOnly, "", "198.18.0.1:80", ""},
		{"proxy GID to its own pod IP goes inbound", pod, proxyGIDOnly, "", self4 + ":8080", "inbound sidecar"},
		// Rule 0: the inbound sidecar delivers to the app at the pod IP
		// from 127.0.0.6 (::6), not captured again. Any user: it is the
		// pod calling itself.
		{"inbound sidecar to the app at the pod IP is not captured", pod, testpod.ProxyUser, "127.0.0.6", self4 + ":8080", "app"},
		{"inbound sidecar to the app at the pod IPv6 is not captured", pod, testpod.ProxyUser, "::6", self6 + ":8080", "app"},
		{"app from 127.0.0.6 to its own pod IP is not captured", pod, testpod.Root, "127.0.0.6", self4 + ":8080", "app"},
		{"proxy from 127.0.0.6 to localhost is not captured", pod, testpod.ProxyUser, "127.0.0.6", "127.0.0.1:8080", "app"},
		{"peer to the app is captured inbound", peer, testpod.Root, "", self4 + ":8080", "inbound sidecar"},
		{"peer to the app over IPv6 is captured inbound", peer, testpod.Root, "", self6 + ":8080", "inbound sidecar"},
		{"peer to the health port is not captured", peer, testpod.Root, "", self4 + ":15021", "health"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A late accept from an earlier case must not be blamed here.
			for len(accepted) > 0 {
				<-accepted
			}
			host, port, err := net.SplitHostPort(tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			cmd := tt.from.Command(context.Background(), tt.user, "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port)
			if tt.src != "" {
				// bash cannot pick the source address; curl can. The
				// listeners close without answering: curl's error is moot.
				cmd = tt.from.Command(context.Background(), tt.user, "curl", "-gsS", "--max-time", "2",
					"--interface", tt.src, "http://"+tt.dst+"/")
			}
			out, err := cmd.CombinedOutput()
			// Wait long for an expected accept, briefly for an unexpected one.
			wait := 5 * time.Second
			if tt.want == "" {
				wait = 300 * time.Millisecond
			}
			got := ""
			select {
			case got = <-accepted:
			case <-time.After(wait):
			}
			if got != tt.want {
				t.Errorf("connection to %s accepted by %q, want %q (bash: %v %s)", tt.dst, got, tt.want, err, out)
			}
		})
	}
}

// TestKernelInboundSource: ::6 is added to lo once, and removed once.
func TestKernelInboundSource(t *testing.T) {
	pod := newPod(t)
	onLo := func() bool {
		out, err := pod.Exec(context.Background(), "ip", "-6", "addr", "show", "dev", "lo")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(out, "inet6 ::6/128 ")
	}
	steps := []struct {
		name   string
		op     func() (bool, error)
		want   bool // what op returns: it changed something
		wantLo bool // ::6 is on lo after it
	}{
		{"add", AddInboundSource, true, true},
		{"add again", AddInboundSource, false, true},
		{"remove", RemoveInboundSource, true, false},
		{"remove again", RemoveInboundSource, false, false},
	}
	for _, s := range steps {
		var got bool
		if err := pod.Run(func() (err error) { got, err = s.op(); return err }); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got != s.want || onLo() != s.wantLo {
			t.Errorf("%s: changed %v, ::6 on lo %v; want %v, %v", s.name, got, onLo(), s.want, s.wantLo)
		}
	}
}

// listenAll listens in pod where the sidecar and an app would, and
// returns a channel that names the listener of each accepted connection.
func listenAll(t *testing.T, pod *testpod.Pod) <-chan string {
	t.Helper()
	accepted := make(chan string, 10)
	for name, addr := range map[string]string{
		"outbound sidecar": ":15001", "inbound sidecar": ":15006", "health": ":15021", "app": ":8080",
	} {
		l, err := pod.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		meshtest.Serve(t, l, func(net.Conn) { accepted <- name })
	}
	return accepted
}
