package testpod

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/privileged"
)

func TestPodsTalkOverV4AndV6(t *testing.T) {
	privileged.Require(t, "ip", "setpriv")
	node := NewNode(t)
	a, b := node.AddPod(t, "a"), node.AddPod(t, "b")
	if got, want := b.IPv4, netip.MustParseAddr("198.18.0.3"); got != want {
		t.Fatalf("second pod IPv4 = %v, want %v", got, want)
	}
	for _, addr := range []netip.Addr{b.IPv4, b.IPv6} {
		l, err := b.Listen("tcp", netip.AddrPortFrom(addr, 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmtPeer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
			_, _ = io.WriteString(c, fmtPeer+"\n")
			c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(addr, 9000).String())
		cancel()
		if err != nil {
			t.Fatalf("dial %v from pod a: %v", addr, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := a.IPv4.String()
		if addr.Is6() {
			want = a.IPv6.String()
		}
		if got := strings.TrimSpace(line); got != want {
			t.Errorf("server saw peer %s, want pod a's address %s", got, want)
		}
	}
}

func TestPodIsolatedFromTestNamespace(t *testing.T) {
	privileged.Require(t, "ip")
	node := NewNode(t)
	a := node.AddPod(t, "a")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// The same loopback address inside the pod is the pod's own loopback.
	if c, err := a.Dial(ctx, "tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("dial from the pod reached a listener in the test's namespace")
	}
}

func TestCommandRunsAsProxyUser(t *testing.T) {
	privileged.Require(t, "ip", "setpriv")
	a := NewNode(t).AddPod(t, "a")
	out, err := a.Command(context.Background(), ProxyUser, "id", "-u").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "1337" {
		t.Errorf("id -u as ProxyUser = %q, want 1337", got)
	}
	out, err = a.Command(context.Background(), Root, "ip", "-o", "addr", "show", "dev", "eth0").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), a.IPv4.String()+"/24") {
		t.Errorf("command did not run in the pod: eth0 is %s", out)
	}
}

func TestDestroyRemovesEverything(t *testing.T) {
	privileged.Require(t, "ip")
	node := NewNode(t)
	a := node.AddPod(t, "a")
	pr := a.Start(t, Root, "sleep", "600")
	node.Destroy()
	select {
	case <-pr.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("process in the pod still running after Destroy")
	}
	for _, ns := range []string{node.Name(), a.NetNS} {
		if _, err := os.Stat(nsDir + "/" + ns); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists after Destroy (stat: %v)", ns, err)
		}
	}
}

// TestInterruptRemovesNamespaces runs a child test process that makes a node
// and waits, interrupts it, and checks its namespaces are gone.
func TestInterruptRemovesNamespaces(t *testing.T) {
	privileged.Require(t, "ip")
	if os.Getenv("TESTPOD_CHILD") == "1" {
		node := NewNode(t)
		node.AddPod(t, "a")
		os.Stdout.WriteString("ready " + node.Name() + "\n")
		time.Sleep(time.Minute)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInterruptRemovesNamespaces$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTPOD_CHILD=1")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	var nodeName string
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
			nodeName = name
			break
		}
	}
	if nodeName == "" {
		t.Fatal("child never made its node")
	}
	if _, err := os.Stat(nsDir + "/" + nodeName); err != nil {
		t.Fatalf("child's node namespace missing while it runs: %v", err)
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	go io.Copy(io.Discard, stdout)
	_ = cmd.Wait()
	if left := ownedBy(cmd.Process.Pid); len(left) > 0 {
		t.Errorf("namespaces left after SIGINT: %v", left)
	}
}

func ownedBy(pid int) []string {
	var names []string
	for _, ns := range ownedNamespaces() {
		if ns.pid == pid {
			names = append(names, ns.name)
		}
	}
	return names
}

// TestNodeProcessDiesWithTheTest runs a child test process that starts a
// node agent (StartOnNode) and waits, kills the child outright (no
// cleanups run, as on a -timeout panic), and checks the agent died too.
func TestNodeProcessDiesWithTheTest(t *testing.T) {
	if os.Getenv("TESTPOD_CHILD") == "agent" {
		p := StartOnNode(t, "sleep", "600")
		os.Stdout.WriteString("agent " + strconv.Itoa(p.cmd.Process.Pid) + "\n")
		time.Sleep(time.Minute)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNodeProcessDiesWithTheTest$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTPOD_CHILD=agent")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	agent := 0
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "agent "); ok {
			agent, _ = strconv.Atoi(s)
			break
		}
	}
	if agent == 0 {
		t.Fatal("child never started its agent")
	}
	_ = cmd.Process.Kill()
	go io.Copy(io.Discard, stdout)
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(agent, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(agent, syscall.SIGKILL)
			t.Fatalf("the agent (pid %d) outlived the test process that started it", agent)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
