package redirect

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

var _ Tables = (*iptables.IPTables)(nil)

// NewTables returns family f's tables through the iptables or ip6tables
// command found on PATH, naming the command in the error if it is
// missing. The commands run in the network namespace of the OS thread
// that makes each call.
func NewTables(f Family) (Tables, error) {
	cmd := f.command()
	if _, err := exec.LookPath(cmd); err != nil {
		return nil, fmt.Errorf("redirect: %s needs the %s command: %w", f, cmd, err)
	}
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	t, err := iptables.New(iptables.IPFamily(proto))
	if err != nil {
		return nil, fmt.Errorf("redirect: %s: %w", cmd, err)
	}
	return t, nil
}

// IPv6Enabled reports whether IPv6 is, or can become, enabled in the
// calling thread's network namespace: the kernel has IPv6 and
// disable_ipv6 is 0 for any entry of /proc/sys/net/ipv6/conf (all,
// default, or one interface: an interface can be re-enabled after "all" was
// set to 1). It does not look for addresses: an enabled stack can carry
// IPv6 (link-local, or an address added later), and uncaptured traffic
// would escape the sidecar, so pillion captures IPv6 whenever the namespace
// could use it.
func IPv6Enabled() (bool, error) {
	files, err := filepath.Glob("/proc/sys/net/ipv6/conf/*/disable_ipv6")
	if err != nil {
		return false, fmt.Errorf("redirect: is IPv6 enabled: %w", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue // an interface that just went away
		}
		if err != nil {
			return false, fmt.Errorf("redirect: is IPv6 enabled: %w", err)
		}
		if strings.TrimSpace(string(b)) == "0" {
			return true, nil
		}
	}
	return false, nil // no IPv6 in this kernel, or disabled everywhere
}
