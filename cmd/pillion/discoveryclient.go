package main

import (
	"crypto/x509"
	"flag"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy"
	"github.com/pillionmesh/pillion/proxy/resolve"
)

// discoveryFlags are the proxy's flags that point it at `pillion
// discovery`.
type discoveryFlags struct {
	addr, id     *string
	initialFetch *time.Duration
}

// defaultDiscoveryPath is the path of the SPIFFE ID `pillion discovery`
// presents as deploy/ installs it (its service account), in the sidecar's
// own trust domain.
const defaultDiscoveryPath = "/ns/pillion-system/sa/pillion-discovery"

func addDiscoveryFlags(fs *flag.FlagSet) *discoveryFlags {
	return &discoveryFlags{
		addr: fs.String("discovery-address", "",
			"host:port of 'pillion discovery' (set by the injector): each destination is looked up there the first time it is seen, "+
				"Services are balanced per request over their endpoints and each endpoint's SPIFFE ID is verified; "+
				`"" forwards to the original destination, meshed by the config's mesh.networks. Needs an identity`),
		id: fs.String("discovery-id", "",
			"the SPIFFE ID 'pillion discovery' must present (default spiffe://<our trust domain>"+defaultDiscoveryPath+")"),
		initialFetch: fs.Duration("discovery-initial-fetch-timeout", resolve.DefaultFirstAnswer,
			"how long the first connection to a destination waits for discovery's first answer about it before it goes to the "+
				"destination as addressed (Envoy's initial_fetch_timeout; kube-proxy then serves a ClusterIP)"),
	}
}

// validate checks the flags before anything starts.
func (f *discoveryFlags) validate() error {
	if *f.initialFetch <= 0 {
		return badUsage(fmt.Errorf("--discovery-initial-fetch-timeout: %v: must be positive", *f.initialFetch))
	}
	if *f.addr == "" {
		if *f.id != "" {
			return badUsage(fmt.Errorf("--discovery-id: given without --discovery-address"))
		}
		return nil
	}
	if _, err := resolve.SplitAddress(*f.addr); err != nil {
		return badUsage(fmt.Errorf("--discovery-address: %q: %w", *f.addr, err))
	}
	if *f.id != "" {
		if _, err := spiffeid.FromString(*f.id); err != nil {
			return badUsage(fmt.Errorf("--discovery-id: %q: %w", *f.id, err))
		}
	}
	return nil
}

// client connects to discovery as the flags say (nil when they say
// nothing): the gRPC connection in mTLS, verifying discovery's SPIFFE ID,
// and the resolver on it. The caller runs the resolver and closes the
// connection.
func (f *discoveryFlags) client(id proxy.Identity, log *zap.Logger) (*resolve.Resolver, *grpc.ClientConn, error) {
	if *f.addr == "" {
		return nil, nil, nil
	}
	if id == nil {
		return nil, nil, badUsage(fmt.Errorf("--discovery-address: discovery is reached in mTLS: give an identity (--spiffe-socket or --svid-cert, --svid-key, --svid-bundle)"))
	}
	authz := discoveryInOwnDomain(id)
	if *f.id != "" {
		authz = mtls.AuthorizeExpected(spiffeid.RequireFromString(*f.id))
	}
	conn, err := grpc.NewClient("passthrough:///"+*f.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(mtls.GRPCClientConfig(id, authz))),
		// The reconnect back-off (the resolver's stream waits for the
		// connection, so this paces its reconnects): gRPC's default
		// multiplier and jitter, but capped at the resolver's 5 s, where
		// gRPC's grows to 2 minutes and a sidecar would find discovery back
		// (a restart, a rollout) up to that long after.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: resolve.DefaultMinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: resolve.DefaultMaxBackoff,
		}}))
	if err != nil {
		return nil, nil, badUsage(fmt.Errorf("--discovery-address: %q: %w", *f.addr, err))
	}
	r, err := resolve.New(resolve.Config{Conn: conn, Identity: id, Log: log.Named("discovery"), FirstAnswer: *f.initialFetch})
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return r, conn, nil
}

// discoveryInOwnDomain allows discovery's default ID in the trust domain of
// our own SVID at the time of the handshake.
func discoveryInOwnDomain(id proxy.Identity) mtls.Authorizer {
	return func(got spiffeid.ID, chains [][]*x509.Certificate) error {
		own, err := id.GetX509SVID()
		if err != nil {
			return fmt.Errorf("no SVID of our own to tell discovery's ID by: %w", err)
		}
		want, err := spiffeid.FromPath(own.ID.TrustDomain(), defaultDiscoveryPath)
		if err != nil {
			return err
		}
		return mtls.AuthorizeExpected(want)(got, chains)
	}
}
