package mtls

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
)

// WorkloadSource is a Source fed by the SPIFFE Workload API (a SPIRE
// agent, `pillion identity`, or any other implementation). It connects in
// the background and keeps retrying, so it can be created before the
// Workload API is up; until its first SVID arrives, Ready and GetX509SVID
// say why there is none. Updates (rotated SVIDs, new bundles) replace the
// previous ones as they arrive.
type WorkloadSource struct {
	addr   string
	log    *zap.Logger
	cancel context.CancelFunc
	done   chan struct{}
	first  chan struct{} // closed at the first update

	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
	lastErr error
}

var _ Source = (*WorkloadSource)(nil)

// WorkloadAddr turns a socket path or a Workload API address
// ("unix:///run/spire/agent.sock") into an address go-spiffe accepts.
func WorkloadAddr(s string) (string, error) {
	if strings.HasPrefix(s, "/") {
		s = "unix://" + s
	}
	if err := workloadapi.ValidateAddress(s); err != nil {
		return "", fmt.Errorf("%q: %w", s, err)
	}
	return s, nil
}

// NewWorkloadSource starts watching the Workload API at addr (see
// WorkloadAddr). Close stops it.
func NewWorkloadSource(addr string, log *zap.Logger) (*WorkloadSource, error) {
	addr, err := WorkloadAddr(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &WorkloadSource{
		addr: addr, log: log, cancel: cancel,
		done: make(chan struct{}), first: make(chan struct{}),
		lastErr: errors.New("not connected yet"),
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithBackoffStrategy(retryEvery{}))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mtls: Workload API client for %s: %w", addr, err)
	}
	go func() {
		defer close(s.done)
		defer client.Close()
		_ = client.WatchX509Context(ctx, s)
	}()
	return s, nil
}

// retryEvery retries a failed watch after 1 s, then 2 s, up to 5 s: the
// Workload API is a local socket, and a sidecar waiting for it is not
// ready.
type retryEvery struct{}

func (retryEvery) NewBackoff() workloadapi.Backoff { return &linear{} }

type linear struct{ n int }

func (b *linear) Next() time.Duration {
	b.n = min(b.n+1, 5)
	return time.Duration(b.n) * time.Second
}
func (b *linear) Reset() { b.n = 0 }

// OnX509ContextUpdate is called by go-spiffe with each update.
func (s *WorkloadSource) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	s.mu.Lock()
	prev := s.svid
	s.svid, s.bundles, s.lastErr = svid, c.Bundles, nil
	s.mu.Unlock()
	if prev == nil {
		close(s.first)
	}
	if prev == nil || prev.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		leaf := svid.Certificates[0]
		s.log.Info("identity: SVID from the Workload API", zap.String("spiffe_id", svid.ID.String()),
			zap.String("serial", leaf.SerialNumber.Text(16)), zap.String("issuer", hex.EncodeToString(leaf.AuthorityKeyId)),
			zap.Time("expires", leaf.NotAfter), zap.Int("bundle_cas", bundleSize(c.Bundles, svid.ID.TrustDomain())),
			zap.String("addr", s.addr))
	}
}

func bundleSize(set *x509bundle.Set, td spiffeid.TrustDomain) int {
	if b, ok := set.Get(td); ok {
		return len(b.X509Authorities())
	}
	return 0
}

// OnX509ContextWatchError is called by go-spiffe when the watch fails; it
// retries on its own.
func (s *WorkloadSource) OnX509ContextWatchError(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	s.mu.Lock()
	s.lastErr = err
	have := s.svid != nil
	s.mu.Unlock()
	if have {
		s.log.Warn("identity: Workload API watch failed; keeping the current SVID and retrying",
			zap.String("addr", s.addr), zap.Error(err))
		return
	}
	s.log.Warn("identity: waiting for the Workload API", zap.String("addr", s.addr), zap.Error(err))
}

// GetX509SVID returns the current SVID, or why there is none yet.
func (s *WorkloadSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, fmt.Errorf("no SVID from the Workload API at %s yet: %w", s.addr, s.lastErr)
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns td's current bundle.
func (s *WorkloadSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	bundles := s.bundles
	s.mu.RUnlock()
	if bundles == nil {
		return nil, fmt.Errorf("no X.509 bundle for trust domain %q: nothing from the Workload API at %s yet", td, s.addr)
	}
	return bundles.GetX509BundleForTrustDomain(td)
}

// Ready returns nil once an SVID arrived, else why none has.
func (s *WorkloadSource) Ready() error {
	_, err := s.GetX509SVID()
	return err
}

// WaitReady returns when the first SVID arrived or ctx ended.
func (s *WorkloadSource) WaitReady(ctx context.Context) error {
	select {
	case <-s.first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops watching.
func (s *WorkloadSource) Close() error {
	s.cancel()
	<-s.done
	return nil
}
