//go:build !linux

package redirect

import (
	"errors"
	"fmt"
)

// errUnsupported is returned on systems without iptables.
var errUnsupported = errors.New("redirect: iptables capture needs Linux")

// NewTables returns an error: iptables exists only on Linux.
func NewTables(f Family) (Tables, error) {
	return nil, fmt.Errorf("%w (%s)", errUnsupported, f)
}

// IPv6Enabled returns an error: iptables exists only on Linux.
func IPv6Enabled() (bool, error) { return false, errUnsupported }
