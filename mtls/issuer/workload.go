package issuer

import (
	"bytes"
	"context"
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
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
	keys KeySource
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

// FetchX509SVID sends the caller's SVID and the bundle, then again each
// time half of the SVID's lifetime has passed (a new SVID) or the keys
// change (a new bundle, and a new SVID when another CA signs), until the
// caller goes or the server closes.
func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	id, err := w.identify(ctx)
	if err != nil {
		return err
	}
	st := w.keys.Current()
	var (
		svid    *x509svid.SVID
		signer  *x509.Certificate // svid's CA
		refresh time.Time         // when svid is half spent
	)
	for {
		if now := st.Active.now(); svid == nil || !signer.Equal(st.Active.cert) || !now.Before(refresh) {
			if svid, err = st.Active.Issue(id, w.ttl); err != nil {
				w.log.Error("could not issue an X.509-SVID", zap.Stringer("spiffe_id", id), zap.Error(err))
				return status.Errorf(codes.Internal, "issue an X.509-SVID for %s: %v", id, err)
			}
			leaf := svid.Certificates[0]
			signer, refresh = st.Active.cert, now.Add(max(leaf.NotAfter.Sub(now)/2, minRefresh))
			w.log.Info("issued an X.509-SVID", append([]zap.Field{zap.Stringer("spiffe_id", id),
				zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("expires", leaf.NotAfter),
				zap.String("ca_serial", signer.SerialNumber.Text(16))}, callerFields(ctx)...)...)
		}
		certs, key, err := svid.MarshalRaw()
		if err != nil {
			return status.Errorf(codes.Internal, "encode the X.509-SVID for %s: %v", id, err)
		}
		err = stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId: id.String(), X509Svid: certs, X509SvidKey: key, Bundle: bundleDER(st),
		}}})
		if err != nil {
			return err
		}
		changed, err := w.wait(ctx, max(refresh.Sub(st.Active.now()), 0), st.Changed())
		if err != nil {
			return err
		}
		if changed {
			st = w.keys.Current()
		}
	}
}

// FetchX509Bundles sends the trust domain's bundle, then again each time it
// changes, until the caller goes or the server closes.
func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	if _, err := w.identify(ctx); err != nil {
		return err
	}
	var sent []byte
	for st := w.keys.Current(); ; st = w.keys.Current() {
		if b := bundleDER(st); !bytes.Equal(b, sent) {
			err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
				st.Active.TrustDomain().IDString(): b,
			}})
			if err != nil {
				return err
			}
			sent = b
		}
		if _, err := w.wait(ctx, -1, st.Changed()); err != nil {
			return err
		}
	}
}

// bundleDER is st's bundle as the Workload API carries it: the
// certificates' DER, one after the other.
func bundleDER(st *State) []byte {
	var b []byte
	for _, c := range st.Bundle {
		b = append(b, c.Raw...)
	}
	return b
}

// wait waits for d (forever when negative) or for changed to close. It
// returns whether changed closed, ctx's error when the caller went, and
// errShuttingDown when the server closes.
func (w *workloadAPI) wait(ctx context.Context, d time.Duration, changed <-chan struct{}) (bool, error) {
	var tick <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tick = t.C
	}
	select {
	case <-tick:
		return false, nil
	case <-changed:
		return true, nil
	case <-ctx.Done():
		return false, ctx.Err()
	case <-w.done:
		return false, errShuttingDown
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
