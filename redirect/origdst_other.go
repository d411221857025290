//go:build !linux

package redirect

import (
	"errors"
	"net"
	"net/netip"
)

// ErrUnsupported is returned on systems without netfilter.
var ErrUnsupported = errors.New("redirect: transparent capture needs Linux netfilter")

// OriginalDst is only available on Linux.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrUnsupported
}
