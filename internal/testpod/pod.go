package testpod

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pillionmesh/pillion/sidecar"
)

// Pod is a network namespace attached to a Node. Its fields are set by
// AddPod and must not be changed.
type Pod struct {
	Name  string     // the name the test gave it
	NetNS string     // namespace name, for `ip netns exec`
	IPv4  netip.Addr // address on eth0
	IPv6  netip.Addr // address on eth0

	mu    sync.Mutex
	procs []*Process // started by Start, killed by Node.Destroy
}

// User is who a process in a pod runs as.
type User struct {
	UID, GID uint32
}

// Root is the superuser; ProxyUser is the sidecar's user, exempt from capture.
var (
	Root      = User{0, 0}
	ProxyUser = User{sidecar.DefaultProxyUID, sidecar.DefaultProxyGID}
)

// Run calls fn on an OS thread that is inside the pod's network namespace.
// Sockets fn creates stay in that namespace after Run returns, so
// Run(func() error { l, err = net.Listen(...) }) gives a listener in the pod.
func (p *Pod) Run(fn func() error) error {
	return inNetNS(nsDir+"/"+p.NetNS, fn)
}

// Listen opens a listener inside the pod.
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := p.Run(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the pod, as root (an application, not the
// sidecar: its traffic is captured).
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := p.Run(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command returns a command that runs name inside the pod as u.
func (p *Pod) Command(ctx context.Context, u User, name string, args ...string) *exec.Cmd {
	argv := []string{"netns", "exec", p.NetNS}
	if u != Root {
		argv = append(argv, "setpriv",
			"--reuid="+strconv.FormatUint(uint64(u.UID), 10),
			"--regid="+strconv.FormatUint(uint64(u.GID), 10),
			"--clear-groups", "--")
	}
	argv = append(argv, name)
	argv = append(argv, args...)
	return exec.CommandContext(ctx, "ip", argv...)
}

// Exec runs a command in the pod as root and returns its combined output.
func (p *Pod) Exec(ctx context.Context, name string, args ...string) (string, error) {
	out, err := p.Command(ctx, Root, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("testpod: %s in %s: %w: %s", name, p.Name, err, out)
	}
	return string(out), nil
}

// Process is a long-running command in a pod whose output is collected.
type Process struct {
	cmd  *exec.Cmd
	out  SyncBuffer
	done chan struct{}
	err  error
}

// Start starts name in the pod as u. The process is killed when the test
// ends if it is still running.
func (p *Pod) Start(t Cleaner, u User, name string, args ...string) *Process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr := start(t, p.Command(ctx, u, name, args...), cancel)
	p.mu.Lock()
	p.procs = append(p.procs, pr)
	p.mu.Unlock()
	return pr
}

// StartOnNode starts name on the node, outside any pod (in the test's own
// network namespace, as the test's user), as a node agent runs. It is
// killed when the test ends if it is still running.
func StartOnNode(t Cleaner, name string, args ...string) *Process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	return start(t, exec.CommandContext(ctx, name, args...), cancel)
}

// start starts cmd, collecting its output; cancel (of cmd's context) kills
// it at the test's end.
//
// On Linux the child gets SIGKILL when the OS thread that started it ends
// (Pdeathsig), so that it cannot outlive a test binary that dies without
// running its cleanups (a -timeout panic, a kill): a node agent such as
// `pillion identity` left behind keeps running, and keeps whatever it
// inherited open. The goroutine that starts the child therefore keeps its
// thread locked until the child has exited: the runtime never hands that
// thread to other code, nor ends it early.
func start(t Cleaner, cmd *exec.Cmd, cancel context.CancelFunc) *Process {
	t.Helper()
	pr := &Process{cmd: cmd, done: make(chan struct{})}
	pr.cmd.Stdout = &pr.out
	pr.cmd.Stderr = &pr.out
	pr.cmd.SysProcAttr = sysProcAttr()
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := pr.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		pr.err = pr.cmd.Wait()
		close(pr.done)
	}()
	if err := <-started; err != nil {
		cancel()
		t.Fatalf("testpod: start %s: %v", cmd, err)
	}
	t.Cleanup(func() {
		cancel()
		<-pr.done
	})
	return pr
}

// killAll kills the processes Start started, including one that has not
// entered the namespace yet (which `ip netns pids` cannot see).
func (p *Pod) killAll() {
	p.mu.Lock()
	procs := p.procs
	p.mu.Unlock()
	for _, pr := range procs {
		pr.Kill()
	}
}

// PID is the process's ID. `ip netns exec` and setpriv exec the command in
// place, so it is the command's own.
func (pr *Process) PID() int { return pr.cmd.Process.Pid }

// Output is everything the process wrote to stdout and stderr so far.
func (pr *Process) Output() string { return pr.out.String() }

// Signal sends sig to the process.
func (pr *Process) Signal(sig unix.Signal) error { return pr.cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (pr *Process) Done() <-chan struct{} { return pr.done }

// Wait waits for the process to exit and returns what cmd.Wait returned.
func (pr *Process) Wait() error {
	<-pr.done
	return pr.err
}

// Kill stops the process with SIGKILL and waits for it.
func (pr *Process) Kill() {
	_ = pr.cmd.Process.Kill()
	<-pr.done
}

// SyncBuffer collects a process's output: safe to write from the process's
// pipes while a test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
