package mtls

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// ProtoGRPC is the ALPN protocol of gRPC connections between sidecars and
// the control plane: plain HTTP/2 inside mTLS, as gRPC requires.
const ProtoGRPC = "h2"

// GRPCServerConfig returns the configuration of a gRPC server of the
// control plane (`pillion discovery`), to wrap in grpc's
// credentials.NewTLS: TLS 1.3, ALPN h2, a client SVID required that
// verifies against src's bundles and that authz allows. Like ServerConfig,
// the SVID is fetched from src at every handshake and sessions are never
// resumed.
func GRPCServerConfig(src Source, authz Authorizer) *tls.Config {
	c := tlsconfig.MTLSServerConfig(markedSource{src}, src, authz)
	tls13(c)
	c.NextProtos = []string{ProtoGRPC}
	c.SessionTicketsDisabled = true
	return c
}

// GRPCClientConfig returns the configuration of a sidecar's gRPC
// connection to the control plane, to wrap in grpc's credentials.NewTLS:
// TLS 1.3, ALPN h2, presenting src's SVID; the server must present an SVID
// that verifies against src's bundles and that authz allows. The server's
// host name is not checked: its SPIFFE ID is what authz judges.
func GRPCClientConfig(src Source, authz Authorizer) *tls.Config {
	c := tlsconfig.MTLSClientConfig(markedSource{src}, src, authz)
	tls13(c)
	c.NextProtos = []string{ProtoGRPC}
	return c
}
