package spiretest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// stopGrace is how long a process has to exit after SIGTERM before it is
// killed.
const stopGrace = 5 * time.Second

// outputTail is how much of a process's output goes into a failure message.
const outputTail = 16 << 10

// process is a running SPIRE binary whose output is collected.
type process struct {
	name string
	cmd  *exec.Cmd
	out  testpod.SyncBuffer
	done chan struct{}
	err  error // what cmd.Wait returned; set before done is closed
	stop sync.Once
}

// start starts bin with args and stops it when the test ends.
//
// On Linux the child gets SIGKILL when the OS thread that started it ends
// (Pdeathsig), so it cannot outlive a test binary that dies without running
// its cleanups (a -timeout panic). The goroutine that starts the child
// therefore keeps its thread locked until the child has exited: the runtime
// never hands that thread to other code, nor ends it early.
func start(t testing.TB, name, bin string, args ...string) (*process, error) {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.SysProcAttr = sysProcAttr()
	p.cmd.WaitDelay = stopGrace
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := p.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("spiretest: start %s: %w", name, err)
	}
	t.Cleanup(p.Stop)
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, kills the process if it has not exited after
// stopGrace, and waits for it. It is safe to call more than once.
func (p *process) Stop() {
	p.stop.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// report describes how the process is doing and ends with the tail of its
// output, for failure messages.
func (p *process) report() string {
	state := "running"
	if p.exited() {
		state = fmt.Sprintf("exited: %v", p.err)
	}
	out := p.out.String()
	if len(out) > outputTail {
		out = "…" + out[len(out)-outputTail:]
	}
	return fmt.Sprintf("--- %s (%s) output ---\n%s--- end of %s output ---", p.name, state, out, p.name)
}

// reachable returns an error unless every folder from / down to dir lets
// other users through (the x bit for others), so that a workload running as
// another UID, such as the proxy's 1337, can reach a socket in dir.
func reachable(dir string) error {
	for d := dir; ; {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("spiretest: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("spiretest: %s has mode %v: other users cannot reach %s", d, st.Mode().Perm(), dir)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return nil
		}
		d = parent
	}
}
