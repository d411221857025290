package harness

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// fdLimit is the hard limit on open files the harness and the proxies it
// starts inherit; without CAP_SYS_RESOURCE it cannot be raised.
func fdLimit() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("open-file limit: %w", err)
	}
	return int(min(lim.Max, 1<<24)), nil
}

// fdReserve is what each process keeps of the open-file limit for
// descriptors other than the held connections'. When the idle workload
// starts, the harness has 14 to 20 open (its pods' processes' pipes, the
// sink's and holder's listeners, the Go runtime's), a pillion sidecar 19
// to 22 (listeners, pooled connections), HAProxy 13 (make test's smoke
// run; checkFDs logs them); the rest is room for what opens meanwhile.
const fdReserve = 256

// idleConns is how many connections the idle figure can hold. Each takes
// two descriptors in each proxy (the connection it accepted and the one it
// made) and two in the harness: the client's end, and the server's end,
// the holder running in the harness's process. Moving the holder out to a
// process of its own would leave the harness one per connection, but not
// raise the figure: each proxy still needs two. A connection waiting for
// its mTLS handshake holds no more (pillion connects upstream only once it
// has a handshake slot). Each process therefore stays within half of what
// the limit leaves after fdReserve: 9,872 connections under a limit of
// 20,000.
func idleConns(want int) (int, error) {
	limit, err := fdLimit()
	if err != nil {
		return 0, err
	}
	return min(want, (limit-fdReserve)/2), nil
}

// checkFDs checks, before the idle connections are opened, that the
// harness and each proxy have room under the limit for two descriptors per
// connection besides what they have open, and logs what they have open.
func checkFDs(log io.Writer, n int, proxies []proxy) error {
	limit, err := fdLimit()
	if err != nil {
		return err
	}
	type process struct {
		name string
		pid  int
	}
	procs := []process{{"harness", os.Getpid()}}
	for _, p := range proxies {
		procs = append(procs, process{p.side + " proxy", p.pid})
	}
	for _, p := range procs {
		open, err := meshtest.OpenFDs(p.pid)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		logf(log, "    %s: %d descriptors open, %d more for %d connections, limit %d\n", p.name, open, 2*n, n, limit)
		if open+2*n > limit {
			return fmt.Errorf("%s: %d descriptors open and 2 per connection for %d connections exceed the open-file limit, %d",
				p.name, open, n, limit)
		}
	}
	return nil
}
