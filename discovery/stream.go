package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// A stream is one client's Watch. Its run goroutine owns the
// subscriptions and is the only one that sends. Informer events reach it
// through changed, on the informers' goroutines: they mark the topics its
// subscriptions depend on as pending and wake run, which recomputes the
// affected subscriptions, at most once per Coalesce, and sends those whose
// state changed. A slow client therefore never makes events pile up: what
// waits is a set of topics, and what is sent is the state at sending time.
type stream struct {
	srv  *Server
	ws   grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse]
	subs map[string]*subscription // by destination as subscribed; run's own

	lastFlush time.Time
	wake      chan struct{} // capacity 1: a flush is due

	mu      sync.Mutex
	deps    map[topic]map[string]struct{} // the subscriptions that depend on each topic; written by run
	pending map[topic]time.Time           // topics changed since the last flush, with their first event's time
	// computing is set while run computes answers: every event is then
	// kept pending, since the subscriptions being computed have not
	// registered their topics yet.
	computing bool
}

// A subscription is one destination a client subscribed to.
type subscription struct {
	dst  netip.AddrPort
	last *discoveryv1.Destination // the state last sent
	deps []topic
}

func newStream(s *Server, ws grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse]) *stream {
	return &stream{
		srv: s, ws: ws, subs: make(map[string]*subscription), wake: make(chan struct{}, 1),
		deps: make(map[topic]map[string]struct{}), pending: make(map[topic]time.Time),
	}
}

// A request is a WatchRequest that validated.
type request struct {
	subscribe   []destination
	unsubscribe []string
}

type destination struct {
	raw string // as the client wrote it, as it is answered
	dst netip.AddrPort
}

// parseRequest validates every entry of msg; the error names the first
// that is not ip:port.
func parseRequest(msg *discoveryv1.WatchRequest) (request, error) {
	var req request
	for _, raw := range msg.GetSubscribe() {
		dst, err := parseDestination(raw)
		if err != nil {
			return req, fmt.Errorf("discovery: subscribe %q: %w", raw, err)
		}
		req.subscribe = append(req.subscribe, destination{raw, dst})
	}
	for _, raw := range msg.GetUnsubscribe() {
		if _, err := parseDestination(raw); err != nil {
			return req, fmt.Errorf("discovery: unsubscribe %q: %w", raw, err)
		}
		req.unsubscribe = append(req.unsubscribe, raw)
	}
	return req, nil
}

func parseDestination(s string) (netip.AddrPort, error) {
	dst, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return dst, errors.New(`not ip:port ("[v6]:port" for IPv6)`)
	case dst.Port() == 0:
		return dst, errors.New("port 0")
	case dst.Addr().Zone() != "":
		return dst, errors.New("an IPv6 zone has no meaning in a cluster")
	}
	return dst, nil
}

// run serves the stream until the client ends it, it fails, or the
// server closes.
func (st *stream) run(ctx context.Context, reqs <-chan request, recvErr <-chan error) error {
	var timer *time.Timer
	var due <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-st.srv.closing:
			return status.Error(codes.Unavailable, ErrShuttingDown.Error())
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-reqs:
			if err := st.apply(req); err != nil {
				return err
			}
		case <-st.wake:
			if due != nil {
				continue // a flush is already scheduled
			}
			wait := time.Until(st.lastFlush.Add(st.srv.cfg.Coalesce))
			if wait <= 0 {
				if err := st.flush(); err != nil {
					return err
				}
				continue
			}
			timer = time.NewTimer(wait)
			due = timer.C
		case <-due:
			due = nil
			if err := st.flush(); err != nil {
				return err
			}
		}
	}
}

// apply carries out one request: unsubscriptions first, then
// subscriptions, each answered at once with its whole state (again, for a
// destination already subscribed).
func (st *stream) apply(req request) error {
	for _, raw := range req.unsubscribe {
		if sub := st.subs[raw]; sub != nil {
			st.setDeps(raw, sub.deps, nil)
			delete(st.subs, raw)
			st.srv.m.subscriptions.Dec()
		}
	}
	if len(req.subscribe) == 0 {
		return nil
	}
	out := make([]*discoveryv1.WatchResponse, 0, len(req.subscribe))
	st.setComputing(true)
	for _, d := range req.subscribe {
		sub := st.subs[d.raw]
		if sub == nil {
			if len(st.subs) >= st.srv.cfg.MaxSubscriptions {
				st.setComputing(false)
				return status.Error(codes.ResourceExhausted,
					fmt.Sprintf("%v: subscribing to %q would make %d, more than the %d allowed", ErrTooManySubscriptions, d.raw, len(st.subs)+1, st.srv.cfg.MaxSubscriptions))
			}
			sub = &subscription{dst: d.dst}
			st.subs[d.raw] = sub
			st.srv.m.subscriptions.Inc()
		}
		state, deps := st.srv.idx.lookup(sub.dst)
		st.setDeps(d.raw, sub.deps, deps)
		sub.last, sub.deps = state, deps
		out = append(out, &discoveryv1.WatchResponse{Destination: d.raw, State: state})
	}
	st.setComputing(false)
	for _, r := range out {
		if err := st.ws.Send(r); err != nil {
			return err
		}
		st.srv.m.updates.WithLabelValues("subscribe").Inc()
	}
	return nil
}

// flush recomputes the subscriptions that depend on the pending topics
// and sends those whose state changed.
func (st *stream) flush() error {
	st.lastFlush = time.Now()
	st.mu.Lock()
	dirty := make(map[string]time.Time)
	for t, at := range st.pending {
		for raw := range st.deps[t] {
			if first, ok := dirty[raw]; !ok || at.Before(first) {
				dirty[raw] = at
			}
		}
	}
	clear(st.pending)
	st.computing = true
	st.mu.Unlock()

	type update struct {
		resp *discoveryv1.WatchResponse
		at   time.Time
	}
	var out []update
	for raw, at := range dirty {
		sub := st.subs[raw]
		if sub == nil {
			continue
		}
		state, deps := st.srv.idx.lookup(sub.dst)
		st.setDeps(raw, sub.deps, deps)
		sub.deps = deps
		if proto.Equal(sub.last, state) {
			continue
		}
		sub.last = state
		out = append(out, update{&discoveryv1.WatchResponse{Destination: raw, State: state}, at})
	}
	st.setComputing(false)
	for _, u := range out {
		if err := st.ws.Send(u.resp); err != nil {
			return err
		}
		st.srv.m.updates.WithLabelValues("change").Inc()
		st.srv.m.delay.Observe(time.Since(u.at).Seconds())
	}
	return nil
}

func (st *stream) setComputing(on bool) {
	st.mu.Lock()
	st.computing = on
	st.mu.Unlock()
}

// setDeps replaces the topics subscription raw depends on.
func (st *stream) setDeps(raw string, old, deps []topic) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, t := range old {
		if set := st.deps[t]; set != nil {
			delete(set, raw)
			if len(set) == 0 {
				delete(st.deps, t)
			}
		}
	}
	for _, t := range deps {
		set := st.deps[t]
		if set == nil {
			set = make(map[string]struct{})
			st.deps[t] = set
		}
		set[raw] = struct{}{}
	}
}

// changed keeps the event's topics that the stream's subscriptions
// depend on (all of them while answers are being computed) and wakes run.
func (st *stream) changed(c change) {
	hit := false
	st.mu.Lock()
	for _, t := range c.topics {
		if !st.computing && len(st.deps[t]) == 0 {
			continue
		}
		hit = true
		if first, ok := st.pending[t]; !ok || c.at.Before(first) {
			st.pending[t] = c.at
		}
	}
	st.mu.Unlock()
	if hit {
		select {
		case st.wake <- struct{}{}:
		default:
		}
	}
}
