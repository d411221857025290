package harness

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// Machine names where the figures come from: they compare only with
// figures from the same machine and the same run.
type Machine struct {
	Host    string `json:"host"`
	CPU     string `json:"cpu"`
	CPUs    int    `json:"cpus"`
	Memory  string `json:"memory"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	HAProxy string `json:"haproxy,omitempty"`
	Pillion string `json:"pillion"`
}

// DescribeMachine reads the machine's description from /proc and the
// tools' versions.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		m.Memory = strings.Join(strings.Fields(strings.TrimPrefix(first, "MemTotal:")), " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("haproxy", "-v").Output(); err == nil {
		first, _, _ := strings.Cut(string(out), "\n")
		m.HAProxy = strings.TrimSpace(first)
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Pillion = strings.TrimSpace(string(out))
	}
	return m
}

// String is one line for the table's heading.
func (m Machine) String() string {
	return m.Host + ": " + m.CPU + ", " + strconv.Itoa(m.CPUs) + " CPUs, " + m.Memory + " memory, Linux " + m.Kernel + ", " + m.Go
}
