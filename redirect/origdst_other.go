//go:build !linux

package redirect

import (
	"net"
	"net/netip"
)

// OriginalDst is only available on Linux.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrUnsupported
}
