package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"github.com/pillionmesh/pillion/proxy/ratelog"
	"sync/atomic"

	"go.uber.org/zap"
)

// DefaultMaxHandshakes bounds the mTLS handshakes in flight at once, both
// directions. A handshake costs a signature and a chain verification on
// each side (about a millisecond of CPU) and waits a round trip or two in
// between, so a few dozen keep every core of a sidecar busy; more only
// hold half-done handshakes' buffers and goroutines while each takes
// longer. A flood of new connections (a peer restarting its pool, a
// connection storm) queues instead, first come first served, each within
// the handshake's own time limit.
const DefaultMaxHandshakes = 64

// handshakes bounds the mTLS handshakes in flight: a semaphore whose
// waiters queue in order (a channel's blocked senders are served first in,
// first out).
type handshakes struct {
	slots    chan struct{}
	active   atomic.Int64        // handshakes under way
	queued   atomic.Int64        // waiting for a slot now
	waited   atomic.Int64        // handshakes that had to wait, all told
	timeouts atomic.Int64        // gave up waiting: their time ran out in the queue
	peak     atomic.Int64        // the most ever in flight at once
	warn     ratelog.EverySecond // the "queued" warning
}

func newHandshakes(max int) *handshakes {
	return &handshakes{slots: make(chan struct{}, max)}
}

// acquire waits for a slot within ctx (whose deadline then covers the
// wait and what the slot is for) and returns its release. A wait warns, at
// most once a second.
func (h *handshakes) acquire(ctx context.Context, log *zap.Logger) (release func(), err error) {
	select {
	case h.slots <- struct{}{}:
	default:
		h.waited.Add(1)
		h.queued.Add(1)
		if ce, n := h.warn.Check(log, zap.WarnLevel, "mTLS handshakes queued: the bound of handshakes in flight is reached"); ce != nil {
			ce.Write(zap.Int("max_handshakes", cap(h.slots)), zap.Int64("queued", h.queued.Load()), zap.Int64("suppressed", n))
		}
		select {
		case h.slots <- struct{}{}:
			h.queued.Add(-1)
		case <-ctx.Done():
			h.queued.Add(-1)
			h.timeouts.Add(1)
			return nil, fmt.Errorf("waiting for a handshake slot (%d in flight): %w", cap(h.slots), ctx.Err())
		}
	}
	n := h.active.Add(1)
	for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
	}
	return func() {
		h.active.Add(-1)
		<-h.slots
	}, nil
}

// handshake runs tc's handshake within ctx on a goroutine of its own: the
// handshake's cryptography grows a stack to tens of KiB, which would
// otherwise stay with the caller's goroutine for the life of the
// connection it goes on to relay.
func handshake(ctx context.Context, tc *tls.Conn) error {
	done := make(chan error, 1)
	go func() { done <- tc.HandshakeContext(ctx) }()
	return <-done
}
