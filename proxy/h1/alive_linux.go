package h1

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// alive tells whether c's peer has neither closed it nor sent anything
// unasked, by peeking at its socket without blocking. A connection whose
// socket cannot be reached (not a syscall.Conn, nor a wrapper with
// NetConn) is taken to be alive.
func alive(c net.Conn) bool {
	for {
		if sc, ok := c.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			if err != nil {
				return true
			}
			return peek(rc)
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return true
		}
		c = u.NetConn()
	}
}

func peek(rc syscall.RawConn) bool {
	var buf [1]byte
	var err error
	if cerr := rc.Read(func(fd uintptr) bool {
		_, _, err = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	}); cerr != nil {
		return false
	}
	// EAGAIN: nothing to read, the connection is open. Anything else: the
	// peer closed (a read of 0 bytes), sent bytes no request asked for,
	// or the socket failed.
	return err == unix.EAGAIN || err == unix.EWOULDBLOCK
}
