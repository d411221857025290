package discovery

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/mtls"
)

// NewGRPCServer returns a gRPC server serving srv in mTLS with the SVID
// of id, to clients of id's own trust domain only (the trust domain of
// id's SVID at each handshake). Connections are kept alive by pings, and
// each lives at most about 30 minutes (plus 10 s for its stream to end) so
// that clients spread again over the replicas after a rollout; a client
// reconnects and subscribes again to what it holds, as it does after any
// disconnection.
func NewGRPCServer(srv *Server, id mtls.Source) *grpc.Server {
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(mtls.GRPCServerConfig(id, mtls.AuthorizeSameTrustDomain(id)))),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  30 * time.Second,
			Timeout:               10 * time.Second,
			MaxConnectionAge:      30 * time.Minute,
			MaxConnectionAgeGrace: 10 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discoveryv1.RegisterDiscoveryServer(g, srv)
	return g
}
