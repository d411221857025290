package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// usage is one process's CPU time and memory at one moment.
type usage struct {
	CPU time.Duration // user + system, since the process started
	RSS int64         // resident now, bytes (VmRSS)
	HWM int64         // resident at most so far, bytes (VmHWM)
	// Anon is the part of RSS that is the process's own (RssAnon): the
	// rest is files mapped, the binary's pages first, which the page
	// cache shares with every process running the same binary.
	Anon int64
}

// sample reads pid's usage from /proc.
func sample(pid int) (usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return usage{}, err
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count from the last ')'.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return usage{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(fields[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return usage{}, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, fields[11], fields[12])
	}
	u := usage{CPU: time.Duration(utime+stime) * clockTick}
	mem, err := meshtest.StatusBytes(pid, "VmRSS", "VmHWM", "RssAnon")
	if err != nil {
		return usage{}, err
	}
	u.RSS, u.HWM, u.Anon = mem[0], mem[1], mem[2]
	return u, nil
}
