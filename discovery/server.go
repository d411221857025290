package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/mtls"
)

// Defaults of ServerConfig.
const (
	DefaultMaxSubscriptions = 10_000
	DefaultCoalesce         = 5 * time.Millisecond
)

// ServerConfig tunes a Server. The zero value takes the defaults.
type ServerConfig struct {
	// MaxSubscriptions bounds the subscriptions of one stream: a
	// subscribe beyond it ends the stream with ResourceExhausted. 0 means
	// DefaultMaxSubscriptions.
	MaxSubscriptions int
	// Coalesce is the least time between two batches of updates on one
	// stream: the first change after a quiet period is sent at once, the
	// changes that follow within Coalesce are gathered and each affected
	// destination is sent once, in its latest state. 0 means
	// DefaultCoalesce.
	Coalesce time.Duration
}

// Server implements the Discovery service over an Index. It is safe for
// concurrent use; each Watch stream is served by its own goroutines.
type Server struct {
	discoveryv1.UnimplementedDiscoveryServer
	idx     *Index
	answers *answers
	cfg     ServerConfig
	log     *zap.Logger
	m       *serverMetrics

	closing   chan struct{}
	closeOnce sync.Once
}

var _ discoveryv1.DiscoveryServer = (*Server)(nil)

// NewServer returns a server answering from idx, logging to log and
// registering its metrics on reg.
func NewServer(idx *Index, cfg ServerConfig, log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	if cfg.MaxSubscriptions < 0 || cfg.Coalesce < 0 {
		return nil, fmt.Errorf("discovery: max subscriptions %d and coalesce %v: must not be negative", cfg.MaxSubscriptions, cfg.Coalesce)
	}
	if cfg.MaxSubscriptions == 0 {
		cfg.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = DefaultCoalesce
	}
	m, err := newServerMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{idx: idx, answers: newAnswers(idx.lookup, m.lookups), cfg: cfg, log: log, m: m, closing: make(chan struct{})}
	// Answers are invalidated, and their holders told, before any
	// listener registered later hears of the change.
	idx.onChange(func(c change) { s.answers.invalidate(c.topics, c.at) })
	return s, nil
}

// Errors that end a stream, as the client reads them in its status.
var (
	// ErrShuttingDown ends every stream when the server is closed
	// (codes.Unavailable): the client reconnects, to another replica.
	ErrShuttingDown = errors.New("discovery: the server is shutting down")
	// ErrTooManySubscriptions ends a stream that subscribes to more than
	// ServerConfig.MaxSubscriptions destinations (codes.ResourceExhausted).
	ErrTooManySubscriptions = errors.New("discovery: too many subscriptions on one stream")
)

// Watch serves one sidecar's stream: see the Discovery service. It
// refuses streams with Unavailable until the index synced and after
// Close.
func (s *Server) Watch(ws grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse]) error {
	if !s.idx.Synced() {
		return status.Error(codes.Unavailable, ErrNotSynced.Error())
	}
	ctx := ws.Context()
	select {
	case <-s.closing:
		return status.Error(codes.Unavailable, ErrShuttingDown.Error())
	default:
	}
	st := newStream(s, ws)
	s.m.streams.Inc()
	log := s.log.With(zap.String("peer", peerID(ctx)))
	log.Info("stream opened")
	reqs := make(chan request)
	recvErr := make(chan error, 1)
	go func() { recvErr <- receive(ws, reqs) }()
	err := st.run(ctx, reqs, recvErr)
	n := len(st.subs)
	st.close()
	s.m.streams.Dec()
	if err != nil && status.Code(err) != codes.Canceled {
		log.Info("stream ended", zap.Int("subscriptions", n), zap.Error(err))
	} else {
		log.Info("stream closed", zap.Int("subscriptions", n))
	}
	return err
}

// Close ends every stream with Unavailable (ErrShuttingDown) and refuses
// new ones; the clients reconnect, to another replica. Call it when the
// gRPC server is stopping gracefully: long-lived streams would otherwise
// keep it waiting.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
}

// peerID returns the SPIFFE ID of the stream's client, for logs.
func peerID(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		if id, err := mtls.PeerID(ti.State); err == nil {
			return id.String()
		}
	}
	return p.Addr.String()
}

// receive reads the client's requests until it ends its side (io.EOF) or
// the stream fails, validating each and handing it to the stream's
// goroutine. A malformed request ends the stream with InvalidArgument.
func receive(ws grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse], reqs chan<- request) error {
	ctx := ws.Context()
	for {
		msg, err := ws.Recv()
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		if err != nil {
			return err
		}
		req, err := parseRequest(msg)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		select {
		case reqs <- req:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
