//go:build !linux

package redirect

import "fmt"

// NewTables returns an error: iptables exists only on Linux.
func NewTables(f Family) (Tables, error) {
	return nil, fmt.Errorf("%w (%s)", ErrUnsupported, f)
}

// IPv6Enabled returns an error: iptables exists only on Linux.
func IPv6Enabled() (bool, error) { return false, ErrUnsupported }
