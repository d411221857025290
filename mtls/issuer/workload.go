package issuer

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// securityHeader is the metadata every Workload API call carries, so that a
// browser or a proxy tricked into calling the socket is refused (SPIFFE
// Workload Endpoint spec).
const securityHeader = "workload.spiffe.io"

// minRefresh bounds how often one stream is sent a new SVID, for SVIDs cut
// short by the CA's expiry.
const minRefresh = 500 * time.Millisecond

// workloadAPI serves one socket: every caller gets id, or, when id is zero,
// the ID its UID maps to in uids.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	ca   *CA
	ttl  time.Duration
	id   spiffeid.ID
	uids map[uint32]spiffeid.ID // read-only
	log  *zap.Logger
	done <-chan struct{}
}

var _ workload.SpiffeWorkloadAPIServer = (*workloadAPI)(nil)

var (
	errShuttingDown = status.Error(codes.Unavailable, "pillion identity is shutting down")
	errNoIdentity   = status.Error(codes.PermissionDenied, "no identity issued")
	errJWT          = status.Error(codes.Unimplemented, "pillion identity issues X.509-SVIDs only; JWT-SVIDs are not supported")
)

// FetchX509SVID sends the caller's SVID, then a new one each time half of
// the last one's lifetime has passed, until the caller goes or the server
// closes.
func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	id, err := w.identify(ctx)
	if err != nil {
		return err
	}
	bundle := w.ca.Certificate().Raw
	for {
		svid, err := w.ca.Issue(id, w.ttl)
		if err != nil {
			w.log.Error("could not issue an X.509-SVID", zap.Stringer("spiffe_id", id), zap.Error(err))
			return status.Errorf(codes.Internal, "issue an X.509-SVID for %s: %v", id, err)
		}
		certs, key, err := svid.MarshalRaw()
		if err != nil {
			return status.Errorf(codes.Internal, "encode the X.509-SVID for %s: %v", id, err)
		}
		err = stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId: id.String(), X509Svid: certs, X509SvidKey: key, Bundle: bundle,
		}}})
		if err != nil {
			return err
		}
		leaf := svid.Certificates[0]
		w.log.Info("issued an X.509-SVID", append([]zap.Field{zap.Stringer("spiffe_id", id),
			zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("expires", leaf.NotAfter)},
			callerFields(ctx)...)...)
		refresh := max(leaf.NotAfter.Sub(w.ca.now())/2, minRefresh)
		if err := w.wait(ctx, refresh); err != nil {
			return err
		}
	}
}

// FetchX509Bundles sends the trust domain's bundle once and keeps the
// stream open: the CA does not change while the server runs.
func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	if _, err := w.identify(ctx); err != nil {
		return err
	}
	err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
		w.ca.TrustDomain().IDString(): w.ca.Certificate().Raw,
	}})
	if err != nil {
		return err
	}
	return w.wait(ctx, -1)
}

// wait waits for d (forever when negative). It returns nil when d passed,
// ctx's error when the caller went, and errShuttingDown when the server
// closes.
func (w *workloadAPI) wait(ctx context.Context, d time.Duration) error {
	var tick <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tick = t.C
	}
	select {
	case <-tick:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return errShuttingDown
	}
}

// identify returns the ID the caller gets, or PermissionDenied.
func (w *workloadAPI) identify(ctx context.Context) (spiffeid.ID, error) {
	if !w.id.IsZero() {
		return w.id, nil
	}
	info, ok := caller(ctx)
	if !ok {
		w.log.Warn("refused a caller whose UID is unknown")
		return spiffeid.ID{}, errNoIdentity
	}
	id, ok := w.uids[info.uid]
	if !ok {
		w.log.Warn("refused a caller: no identity for its UID", callerFields(ctx)...)
		return spiffeid.ID{}, errNoIdentity
	}
	return id, nil
}

func caller(ctx context.Context) (peerAuth, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return peerAuth{}, false
	}
	info, ok := p.AuthInfo.(peerAuth)
	return info, ok && info.known
}

func callerFields(ctx context.Context) []zap.Field {
	info, ok := caller(ctx)
	if !ok {
		return nil
	}
	return []zap.Field{zap.Uint32("uid", info.uid), zap.Uint32("gid", info.gid), zap.Int32("pid", info.pid)}
}

func (*workloadAPI) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return nil, errJWT
}

func (*workloadAPI) FetchJWTBundles(*workload.JWTBundlesRequest, grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return errJWT
}

func (*workloadAPI) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return nil, errJWT
}

// checkHeader refuses calls without the Workload API's security header, in
// SPIRE's words.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func requireHeaderUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func requireHeaderStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}
