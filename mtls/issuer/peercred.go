package issuer

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// peerAuth is what peerCredentials learns about a caller: its UID, GID and
// PID when known.
type peerAuth struct {
	credentials.CommonAuthInfo
	known    bool
	uid, gid uint32
	pid      int32
}

func (peerAuth) AuthType() string { return "peercred" }

// peerCredentials are gRPC transport credentials for unix sockets that
// authenticate nothing and encrypt nothing: the handshake reads who is
// calling from the kernel (SO_PEERCRED) and hands it to the handlers as the
// peer's AuthInfo. With required set, a connection whose credentials cannot
// be read is refused; without, it goes on unidentified.
type peerCredentials struct{ required bool }

var _ credentials.TransportCredentials = peerCredentials{}

func (c peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// A unix socket between two processes on one host: nothing to encrypt.
	info := peerAuth{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	uid, gid, pid, err := peerCred(conn)
	if err != nil {
		if c.required {
			return nil, nil, err
		}
		return conn, info, nil
	}
	info.known, info.uid, info.gid, info.pid = true, uid, gid, pid
	return conn, info, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("issuer: peer credentials are for the server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil }
