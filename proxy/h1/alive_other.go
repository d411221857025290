//go:build !linux

package h1

import "net"

// alive cannot look at a socket without reading it here: a connection is
// taken to be alive, and a server's close is found when it is used.
func alive(net.Conn) bool { return true }
