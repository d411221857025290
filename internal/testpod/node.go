// Package testpod makes throw-away "pods" for tests and demos: network
// namespaces joined by a bridge in a "node" namespace, with addresses from
// 198.18.0.0/24 (set aside for benchmarking) and fd00:ca7::/64. Nothing is
// routed out of the node namespace, so traffic stays among the pods.
//
// Everything a Node creates is removed when the test ends (t.Cleanup), when
// the process gets SIGINT or SIGTERM, and, for a process that died without
// either (a panic, SIGKILL, a test time-out), by the next NewNode, which
// removes every namespace whose owning process is gone.
package testpod

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// nsPrefix starts the name of every namespace this package creates; the
// process ID follows, so stale namespaces can be found and removed.
const nsPrefix = "pilt-"

// nsDir is where `ip netns` keeps named network namespaces.
const nsDir = "/run/netns"

// Subnets the pods are addressed from.
var (
	bridgeV4 = netip.MustParseAddr("198.18.0.1")
	bridgeV6 = netip.MustParseAddr("fd00:ca7::1")
)

// Node is a network namespace with a bridge that joins its pods. It is safe
// for concurrent use.
type Node struct {
	name string // namespace name
	id   string // pid-random, shared by the node's pods' namespace names
	log  func(format string, args ...any)

	mu        sync.Mutex
	pods      []*Pod
	destroyed bool
	stopSig   func()
}

// Cleaner is what a Node needs of a test: a place to register its removal.
// *testing.T and *testing.B satisfy it; so does Session, for programs.
type Cleaner interface {
	Cleanup(func())
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
}

var _ Cleaner = (testing.TB)(nil)

// signalHandler is an optional ability of a Cleaner: one that runs its own
// cleanups on SIGINT and SIGTERM (Session does) needs no handler from
// NewNode. A test's Cleaner does not, so NewNode removes the process's
// namespaces itself on those signals, then exits.
type signalHandler interface {
	HandlesSignals() bool
}

// NewNode creates the node namespace and its bridge. It fails t if that is
// not possible; callers check privileges first (see internal/privileged).
func NewNode(t Cleaner) *Node {
	t.Helper()
	sweepStale()
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	id := strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
	n := &Node{name: nsPrefix + id + "-node", id: id, log: t.Logf}
	t.Cleanup(n.Destroy)
	if sh, ok := t.(signalHandler); !ok || !sh.HandlesSignals() {
		n.watchSignals()
	}
	if err := n.create(); err != nil {
		t.Fatalf("testpod: %v", err)
	}
	return n
}

// Name is the node namespace's name (as `ip netns list` shows it).
func (n *Node) Name() string { return n.name }

// BridgeV4 is the node's address on its bridge, 198.18.0.1: the pods'
// IPv4 gateway, where they reach what the node exposes with Listen.
func (n *Node) BridgeV4() netip.Addr { return bridgeV4 }

// BridgeV6 is the node's IPv6 address on its bridge, fd00:ca7::1.
func (n *Node) BridgeV6() netip.Addr { return bridgeV6 }

// Run calls fn on an OS thread that is inside the node's network
// namespace; sockets fn creates stay there (see Pod.Run).
func (n *Node) Run(fn func() error) error {
	return inNetNS(nsDir+"/"+n.name, fn)
}

// Listen opens a listener inside the node's network namespace, e.g. on
// BridgeV4 so that every pod can connect to it. Together with Forward it
// exposes to the pods a server running in the test's own namespace.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Run(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

func (n *Node) create() error {
	if err := run("ip", "netns", "add", n.name); err != nil {
		return fmt.Errorf("create node namespace: %w", err)
	}
	steps := [][]string{
		{"ip", "-n", n.name, "link", "set", "lo", "up"},
		{"ip", "-n", n.name, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", n.name, "addr", "add", bridgeV4.String() + "/24", "dev", "br0"},
		{"ip", "-n", n.name, "addr", "add", bridgeV6.String() + "/64", "dev", "br0", "nodad"},
		{"ip", "-n", n.name, "link", "set", "br0", "up"},
	}
	return runAll(steps)
}

// AddPod creates a pod namespace attached to the node's bridge, with
// loopback up, one IPv4 and one IPv6 address on eth0 and default routes
// through the node. The first pod gets 198.18.0.2 and fd00:ca7::2, the
// next .3 and ::3, and so on.
func (n *Node) AddPod(t Cleaner, name string) *Pod {
	t.Helper()
	n.mu.Lock()
	idx := len(n.pods)
	p := &Pod{
		Name:  name,
		NetNS: fmt.Sprintf("%s%s-%d", nsPrefix, n.id, idx),
		IPv4:  netip.AddrFrom4([4]byte{198, 18, 0, byte(idx + 2)}),
		IPv6:  netip.MustParseAddr(fmt.Sprintf("fd00:ca7::%x", idx+2)),
	}
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	if idx > 250 {
		t.Fatalf("testpod: too many pods on one node")
	}
	if err := n.createPod(p, idx); err != nil {
		t.Fatalf("testpod: add pod %s: %v", name, err)
	}
	return p
}

func (n *Node) createPod(p *Pod, idx int) error {
	veth := fmt.Sprintf("veth%d", idx)
	if err := run("ip", "netns", "add", p.NetNS); err != nil {
		return err
	}
	return runAll([][]string{
		{"ip", "-n", n.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		{"ip", "-n", n.name, "link", "set", veth, "master", "br0", "up"},
		{"ip", "-n", p.NetNS, "link", "set", "lo", "up"},
		{"ip", "-n", p.NetNS, "addr", "add", p.IPv4.String() + "/24", "dev", "eth0"},
		{"ip", "-n", p.NetNS, "addr", "add", p.IPv6.String() + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", p.NetNS, "link", "set", "eth0", "up"},
		{"ip", "-n", p.NetNS, "route", "add", "default", "via", bridgeV4.String()},
		{"ip", "-n", p.NetNS, "-6", "route", "add", "default", "via", bridgeV6.String()},
	})
}

// Destroy kills every process left in the node's namespaces and removes
// them. It is idempotent; NewNode registers it with t.Cleanup.
func (n *Node) Destroy() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.destroyed {
		return
	}
	n.destroyed = true
	if n.stopSig != nil {
		n.stopSig()
	}
	for _, p := range n.pods {
		p.killAll()
		if err := removeNS(p.NetNS); err != nil {
			n.log("testpod: %v", err)
		}
	}
	if err := removeNS(n.name); err != nil {
		n.log("testpod: %v", err)
	}
}

// watchSignals removes this process's namespaces on SIGINT or SIGTERM and
// then exits, as the signal would have.
func (n *Node) watchSignals() {
	n.stopSig = onSignal(func() {
		fmt.Fprintln(os.Stderr, "testpod: removing test namespaces")
		removeOwnedBy(os.Getpid())
	})
}

// onSignal calls cleanup on the first SIGINT or SIGTERM, then exits with
// 128+signal as the signal would have. The returned func stops watching.
func onSignal(cleanup func()) (stop func()) {
	ch := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "\n%v: cleaning up\n", sig)
			cleanup()
			os.Exit(128 + int(sig.(syscall.Signal)))
		case <-done:
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

// sweepStale removes namespaces left by processes that no longer exist.
func sweepStale() {
	for _, ns := range ownedNamespaces() {
		if _, err := os.Stat("/proc/" + strconv.Itoa(ns.pid)); os.IsNotExist(err) {
			_ = removeNS(ns.name)
		}
	}
}

// removeOwnedBy removes every namespace created by process pid.
func removeOwnedBy(pid int) {
	for _, ns := range ownedNamespaces() {
		if ns.pid == pid {
			_ = removeNS(ns.name)
		}
	}
}

type ownedNS struct {
	name string
	pid  int
}

func ownedNamespaces() []ownedNS {
	entries, err := os.ReadDir(nsDir)
	if err != nil {
		return nil
	}
	var out []ownedNS
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidText); err == nil {
			out = append(out, ownedNS{name: e.Name(), pid: pid})
		}
	}
	return out
}

// removeNS kills the processes in a namespace and deletes it.
func removeNS(name string) error {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if _, err := os.Stat(nsDir + "/" + name); os.IsNotExist(err) {
		return nil
	}
	if err := run("ip", "netns", "del", name); err != nil {
		if _, serr := os.Stat(nsDir + "/" + name); os.IsNotExist(serr) {
			return nil // removed meanwhile, by a signal handler
		}
		return fmt.Errorf("remove namespace %s: %w", name, err)
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runAll(cmds [][]string) error {
	for _, c := range cmds {
		if err := run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}
