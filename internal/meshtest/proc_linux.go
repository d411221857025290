package meshtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ProxyPID returns the process ID of the proxy sc started: the process in
// sc's pod whose command line is sc.Bin followed by "proxy". It is an error
// if there is not exactly one.
func (sc *Sidecar) ProxyPID() (int, error) {
	ns, err := os.Stat("/run/netns/" + sc.Pod.NetNS)
	if err != nil {
		return 0, fmt.Errorf("meshtest: %w", err)
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("meshtest: %w", err)
	}
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue // exited meanwhile
		}
		args := bytes.Split(cmdline, []byte{0})
		if len(args) < 2 || string(args[0]) != sc.Bin || string(args[1]) != "proxy" {
			continue
		}
		if st, err := os.Stat(filepath.Join("/proc", d.Name(), "ns", "net")); err == nil && os.SameFile(st, ns) {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("meshtest: %d proxy processes in %s, want 1: %v", len(pids), sc.Pod.Name, pids)
	}
	return pids[0], nil
}

// RSS returns the resident memory of process pid (VmRSS),
// in bytes.
func RSS(pid int) (int64, error) {
	v, err := StatusBytes(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// StatusBytes reads the kB fields named keys (such as "VmRSS", "VmHWM")
// from /proc/<pid>/status, in one read, and returns them in bytes, in the
// order asked. A missing field is an error.
func StatusBytes(pid int, keys ...string) ([]int64, error) {
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return nil, fmt.Errorf("meshtest: %w", err)
	}
	out := make([]int64, len(keys))
	found := make([]bool, len(keys))
	for line := range strings.SplitSeq(string(status), "\n") {
		name, v, ok := strings.Cut(line, ":")
		i := slices.Index(keys, name)
		if !ok || i < 0 {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("meshtest: %s of %d: %q: %w", name, pid, v, err)
		}
		out[i], found[i] = kb<<10, true
	}
	if i := slices.Index(found, false); i >= 0 {
		return nil, fmt.Errorf("meshtest: no %s in /proc/%d/status", keys[i], pid)
	}
	return out, nil
}

// OpenFDs returns how many file descriptors process pid has open.
func OpenFDs(pid int) (int, error) {
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, fmt.Errorf("meshtest: %w", err)
	}
	return len(fds), nil
}
