package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (level SOL_IP) and IP6T_SO_ORIGINAL_DST
// (level SOL_IPV6) from linux/netfilter_ipv4.h and netfilter_ipv6/ip6_tables.h:
// both are 80.
const soOriginalDst = 80

// OriginalDst returns the destination the client asked for before iptables
// redirected the connection to us. It works on the raw socket through
// SyscallConn, so the connection stays in non-blocking mode (File() would
// switch it to blocking). For a connection that was not redirected it
// returns the local address the client connected to.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v6 := local != nil && local.IP.To4() == nil
	var (
		dst  netip.AddrPort
		serr error
	)
	cerr := raw.Control(func(fd uintptr) {
		if v6 {
			dst, serr = originalDst6(int(fd))
		} else {
			dst, serr = originalDst4(int(fd))
		}
	})
	if err := errors.Join(cerr, serr); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination: %w", err)
	}
	return dst, nil
}

// originalDst4 reads a struct sockaddr_in. x/sys/unix has no getter for it,
// but IPv6Mreq is 20 bytes with the sockaddr_in's 16 at its start.
func originalDst4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	// struct sockaddr_in: family (host order), port (network order), addr.
	b := m.Multiaddr[:]
	port := binary.BigEndian.Uint16(b[2:4])
	addr := netip.AddrFrom4([4]byte(b[4:8]))
	return netip.AddrPortFrom(addr, port), nil
}

// originalDst6 reads a struct sockaddr_in6 (28 bytes), which is where
// IPv6MTUInfo (sockaddr_in6 then a uint32) starts.
func originalDst6(fd int) (netip.AddrPort, error) {
	mi, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := mi.Addr
	// RawSockaddrInet6.Port holds the network-order bytes as read from memory.
	var pb [2]byte
	binary.NativeEndian.PutUint16(pb[:], sa.Port)
	port := binary.BigEndian.Uint16(pb[:])
	addr := netip.AddrFrom16(sa.Addr)
	return netip.AddrPortFrom(addr, port), nil
}
