package proxy

import (
	"net"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/proxy/ratelog"
	"github.com/pillionmesh/pillion/proxy/relay"
)

// admission lets accepted connections in up to Config.MaxConnections at
// once, both directions together, and keeps every open socket, both ends,
// so that a drain that runs out of time can reset them (lifecycle.go).
// The mTLS handshakes have their own bound (handshakes). Its methods are
// safe for concurrent use; conns must be made before the first.
type admission struct {
	max    int          // Config.MaxConnections
	active atomic.Int64 // connections admitted and not yet left
	// warnOverLimit lets the warning of connections refused over max
	// through at most once a second.
	warnOverLimit ratelog.EverySecond
	wg            sync.WaitGroup // the connections admitted and not yet left

	mu      sync.Mutex
	conns   map[*net.TCPConn]struct{} // open sockets, both ends, for the final reset
	closing bool                      // the final reset has run: refuse new sockets
}

// admit lets c, accepted on dir's listener, in and tracks it: the caller
// serves it, then calls leave. Over the limit, or once the final reset
// has run, c is reset and admit returns false; a refusal over the limit is
// counted in st and warned of, at most once a second.
func (a *admission) admit(c *net.TCPConn, dir Direction, st *DirStats, log *zap.Logger) bool {
	if a.active.Add(1) > int64(a.max) {
		a.active.Add(-1)
		st.OverLimit.Add(1)
		if ce, n := a.warnOverLimit.Check(log, zap.WarnLevel, "connection limit reached: refusing"); ce != nil {
			ce.Write(zap.Stringer("direction", dir), zap.Stringer("src", c.RemoteAddr()),
				zap.Int("max_connections", a.max), zap.Int64("suppressed", n))
		}
		relay.Reset(c)
		return false
	}
	if !a.track(c) {
		a.active.Add(-1)
		relay.Reset(c)
		return false
	}
	a.wg.Add(1)
	return true
}

// leave ends what admit began for c, once the caller is done with it.
func (a *admission) leave(c *net.TCPConn) {
	a.untrack(c)
	a.active.Add(-1)
	a.wg.Done()
}

// track records c as open, so a drain time-out can reset it. It returns
// false, and does not record c, once that final reset has run: the caller
// must then reset c itself.
func (a *admission) track(c *net.TCPConn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

// untrack forgets c.
func (a *admission) untrack(c *net.TCPConn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

// allDone returns a channel closed once every connection admitted has
// left.
func (a *admission) allDone() <-chan struct{} {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	return done
}

// resetAll resets every open socket and refuses those tracked from then
// on: the drain ran out of time.
func (a *admission) resetAll(log *zap.Logger) {
	a.mu.Lock()
	a.closing = true
	log.Warn("drain time-out: resetting connections", zap.Int("sockets", len(a.conns)))
	for c := range a.conns {
		relay.Reset(c)
	}
	a.mu.Unlock()
}
