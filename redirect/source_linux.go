package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// in6Ifreq is struct in6_ifreq from linux/ipv6.h, what SIOCSIFADDR and
// SIOCDIFADDR take on an AF_INET6 socket.
type in6Ifreq struct {
	addr      [16]byte
	prefixLen uint32
	ifIndex   int32
}

// AddInboundSource makes ::6, the inbound sidecar's IPv6 source address
// (InboundSource), an address of lo in the calling thread's network
// namespace, as `ip -6 addr add ::6/128 dev lo` would: unlike 127.0.0.6,
// which all of 127.0.0.0/8 on lo covers, it is not local by default, and
// the sidecar could not connect from it. added is false when ::6 was there
// already (nothing changed). Call it only where IPv6 is enabled; it fails
// if IPv6 is disabled on lo.
func AddInboundSource() (added bool, err error) {
	err = loAddr6(unix.SIOCSIFADDR)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("redirect: adding %s/128 to lo (the inbound sidecar's IPv6 source): %w", InboundSource(IPv6), err)
	}
	return true, nil
}

// RemoveInboundSource removes ::6 from lo, undoing AddInboundSource.
// removed is false when it was not there, also when the kernel or lo has
// no IPv6 (any address was dropped with it).
func RemoveInboundSource() (removed bool, err error) {
	err = loAddr6(unix.SIOCDIFADDR)
	for _, absent := range []error{unix.EADDRNOTAVAIL, unix.ENXIO, unix.ENODEV, unix.EAFNOSUPPORT} {
		if errors.Is(err, absent) {
			return false, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("redirect: removing %s/128 from lo: %w", InboundSource(IPv6), err)
	}
	return true, nil
}

// LoopbackIPv6Enabled reports whether lo has IPv6 in the calling thread's
// network namespace: where it does not, ::6 cannot be added (and the pod
// cannot reach its own IPv6 addresses anyway).
func LoopbackIPv6Enabled() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	if os.IsNotExist(err) {
		return false, nil // no IPv6 in this kernel
	}
	if err != nil {
		return false, fmt.Errorf("redirect: is IPv6 enabled on lo: %w", err)
	}
	return strings.TrimSpace(string(b)) == "0", nil
}

// loAddr6 runs the address ioctl req (add or delete) for ::6/128 on lo.
func loAddr6(req uint) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("IPv6 socket: %w", err)
	}
	defer unix.Close(fd)
	ifr := in6Ifreq{addr: InboundSource(IPv6).As16(), prefixLen: 128, ifIndex: int32(lo.Index)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return errno
	}
	return nil
}
