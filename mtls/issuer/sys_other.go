//go:build !linux

package issuer

import (
	"errors"
	"net"
)

var errPeerCredUnsupported = errors.New("issuer: peer credentials: SO_PEERCRED is only read on Linux; give each Socket its own ID instead")

// peerCred is not implemented off Linux: sockets must have a fixed ID there.
func peerCred(net.Conn) (uid, gid uint32, pid int32, err error) {
	return 0, 0, 0, errPeerCredUnsupported
}

// lockDir does nothing off Linux: there, let one process create the CA
// before others open the same folder.
func lockDir(string) (func(), error) { return func() {}, nil }
