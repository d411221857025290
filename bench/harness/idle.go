package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// dialers bounds the harness's own connects in progress at once, nothing
// more. Each enters the client pod's network namespace on an OS thread of
// its own for the time of its connect (testpod.Pod.Dial), and a Go program
// dies past 10,000 threads. A connect ends at the sidecar's listener in the
// same pod (the capture sends it there) in well under a millisecond, so the
// proxies still receive every connection within about a second, their
// handshakes and upstream connects all to come: bounding and queueing
// those is the proxies' work.
const dialers = 1024

// idle opens cfg.idleHeld connections at once from the client pod to the
// server's holder (each dialled as soon as a dialer is free, none waiting
// for another to reach the server), waits until all reached it or ended,
// and reports how many failed, how fast they reached it, the mTLS
// handshakes each sidecar had in flight, queued, and gave up on in the
// queue (pillion's metrics), and each proxy's RSS, scaled to
// cfg.IdleConns from the RSS before and with the connections if fewer were
// held; then it closes them.
func idle(e *env, cfg Config, proxies []proxy) ([]Value, error) {
	n := cfg.idleHeld
	if err := checkFDs(cfg.Log, n, proxies); err != nil {
		return nil, fmt.Errorf("%s: %w", WorkloadIdle, err)
	}
	before, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	hsBefore, err := handshakesAll(proxies)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WorkloadIdle, err)
	}
	start := time.Now()
	set := openIdle(e, n)
	defer set.close()
	reached := e.holder.waitReached(n, set.failed.Load, 3*time.Minute)
	elapsed := time.Since(start)
	if reached == 0 {
		return nil, fmt.Errorf("%s: none of %d connections reached the server: %w", WorkloadIdle, n, set.err())
	}
	if reached < n {
		logf(cfg.Log, "    %d of %d idle connections did not reach the server: %v\n", n-reached, n, set.err())
	}
	now, err := sampleAll(proxies)
	if err != nil {
		return nil, err
	}
	hsNow, err := handshakesAll(proxies)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WorkloadIdle, err)
	}
	vals := []Value{
		{WorkloadIdle, "opened at once", "conn", "higher", float64(n)},
		{WorkloadIdle, "failed", "conn", "lower", float64(n - reached)},
		{WorkloadIdle, "all dialled", "s", "lower", set.dialled.Seconds()},
		{WorkloadIdle, "opened", "conn/s", "higher", float64(reached) / elapsed.Seconds()},
	}
	for i, p := range proxies {
		if hsNow[i] != nil {
			vals = append(vals,
				Value{WorkloadIdle, "handshakes in flight, peak, " + p.side + " proxy", "hs", "lower", hsNow[i].peak},
				Value{WorkloadIdle, "handshakes queued, " + p.side + " proxy", "hs", "lower", hsNow[i].queued - hsBefore[i].queued},
				Value{WorkloadIdle, "handshakes timed out queued, " + p.side + " proxy", "hs", "lower", hsNow[i].timeouts - hsBefore[i].timeouts})
		}
	}
	for i, p := range proxies {
		per := float64(now[i].RSS-before[i].RSS) / float64(reached)
		scaled := float64(before[i].RSS) + per*float64(cfg.IdleConns)
		vals = append(vals,
			Value{WorkloadIdle, "rss, " + p.side + " proxy", "MB", "lower", scaled / (1 << 20)},
			Value{WorkloadIdle, "per connection, " + p.side + " proxy", "KB", "lower", per / 1024})
	}
	return vals, nil
}

// idleSet is the idle connections, each held by a goroutine that reads
// until it ends.
type idleSet struct {
	conns    []net.Conn
	dialled  time.Duration // until every dial returned
	failed   atomic.Int64  // dials that failed, connections that ended before close
	firstErr atomic.Pointer[error]
	closing  atomic.Bool
	held     sync.WaitGroup
}

// openIdle dials n connections to the holder from the client pod, all at
// once but for the dialers bound, and returns when every dial returned.
func openIdle(e *env, n int) *idleSet {
	s := &idleSet{conns: make([]net.Conn, n)}
	addr := net.JoinHostPort(e.server.IPv4.String(), fmt.Sprint(idlePort))
	slots := make(chan struct{}, dialers)
	var dials sync.WaitGroup
	start := time.Now()
	for i := range n {
		dials.Add(1)
		s.held.Go(func() {
			slots <- struct{}{}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c, err := e.client.Dial(ctx, "tcp", addr)
			cancel()
			<-slots
			s.conns[i] = c
			dials.Done()
			if err != nil {
				s.fail(fmt.Errorf("connection %d: %w", i, err))
				return
			}
			// The holder never writes: a read returns when the
			// connection ends, a proxy having given up on it.
			var b [1]byte
			if _, err := c.Read(b[:]); !s.closing.Load() {
				if err == nil || errors.Is(err, io.EOF) {
					err = errors.New("closed by the other end")
				}
				s.fail(fmt.Errorf("connection %d: %w", i, err))
			}
		})
	}
	dials.Wait()
	s.dialled = time.Since(start)
	return s
}

func (s *idleSet) fail(err error) {
	s.failed.Add(1)
	s.firstErr.CompareAndSwap(nil, &err)
}

// err is the first failure, if any.
func (s *idleSet) err() error {
	if err := s.firstErr.Load(); err != nil {
		return *err
	}
	return errors.New("no connection failed: they did not reach the server in time")
}

func (s *idleSet) close() {
	s.closing.Store(true)
	for _, c := range s.conns {
		if c != nil {
			c.Close()
		}
	}
	s.held.Wait()
}

// holder is the server pod's application that holds connections open and
// counts them. It runs in the harness's process: see idleConns.
type holder struct {
	open atomic.Int64
}

func serveHolder(t testpod.Cleaner, pod *testpod.Pod) (*holder, error) {
	l, err := pod.Listen("tcp", fmt.Sprintf(":%d", idlePort))
	if err != nil {
		return nil, err
	}
	h := &holder{}
	meshtest.Serve(t, l, func(c net.Conn) {
		_ = c.SetDeadline(time.Time{}) // held until the harness closes it
		h.open.Add(1)
		defer h.open.Add(-1)
		_, _ = io.Copy(io.Discard, c)
	})
	return h, nil
}

// waitReached waits until n connections are open at the holder, or no
// more can come (those open and those failed make n), or timeout; it
// returns how many are open.
func (h *holder) waitReached(n int, failed func() int64, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		open := h.open.Load()
		if open >= int64(n) || open+failed() >= int64(n) || time.Now().After(deadline) {
			return int(open)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
