package issuer

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerCred returns the credentials of the process at the other end of a unix
// socket connection, as the kernel recorded them at connect (SO_PEERCRED).
// It works on the raw descriptor through SyscallConn().Control: File() would
// duplicate it and switch it to blocking mode.
func peerCred(conn net.Conn) (uid, gid uint32, pid int32, err error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, 0, 0, fmt.Errorf("peer credentials: %T is not a socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred *unix.Ucred
		gerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	if gerr != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: SO_PEERCRED: %w", gerr)
	}
	return cred.Uid, cred.Gid, cred.Pid, nil
}

// lockDir takes an exclusive flock on dir itself, waiting for other holders,
// and returns the function that releases it.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("flock %s: %w", dir, err)
	}
	return func() { _ = f.Close() }, nil
}
