package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// A stream is one client's Watch. Its run goroutine owns the
// subscriptions and is the only one that sends. Each subscription holds
// its destination's shared answer (answers); when an informer event
// invalidates an answer, its holders are told through dirty, on the
// informer's goroutine: it marks the answer pending and wakes run, which
// gets the pending answers, at most once per Coalesce, and sends those
// whose state changed. A slow client therefore never makes events pile
// up: what waits is a set of answers, and what is sent is the state at
// sending time.
type stream struct {
	srv  *Server
	ws   grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse]
	subs map[string]*subscription // by destination as subscribed; run's own
	held map[*answer][]string     // the subscriptions to each answer; run's own

	lastFlush time.Time
	wake      chan struct{} // capacity 1: a flush is due

	mu      sync.Mutex
	pending map[*answer]time.Time // answers invalidated since the last flush, with their first event's time
}

// A subscription is one destination a client subscribed to.
type subscription struct {
	ans  *answer
	last *discoveryv1.Destination // the state last sent: answers' canonical pointer
}

func newStream(s *Server, ws grpc.BidiStreamingServer[discoveryv1.WatchRequest, discoveryv1.WatchResponse]) *stream {
	return &stream{
		srv: s, ws: ws, subs: make(map[string]*subscription), held: make(map[*answer][]string),
		wake: make(chan struct{}, 1), pending: make(map[*answer]time.Time),
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
			st.drop(raw, sub)
		}
	}
	if err := st.checkLimit(req.subscribe); err != nil {
		return err
	}
	for _, d := range req.subscribe {
		sub := st.subs[d.raw]
		if sub == nil {
			sub = &subscription{ans: st.srv.answers.acquire(d.dst, st)}
			st.subs[d.raw] = sub
			st.held[sub.ans] = append(st.held[sub.ans], d.raw)
			st.srv.m.subscriptions.Inc()
		}
		sub.last = st.srv.answers.get(sub.ans)
		if err := st.ws.Send(&discoveryv1.WatchResponse{Destination: d.raw, State: sub.last}); err != nil {
			return err
		}
		st.srv.m.updates.WithLabelValues("subscribe").Inc()
	}
	return nil
}

// checkLimit refuses, before any is answered, subscriptions that would
// take the stream over MaxSubscriptions.
func (st *stream) checkLimit(subscribe []destination) error {
	n := len(st.subs)
	if n+len(subscribe) <= st.srv.cfg.MaxSubscriptions {
		return nil
	}
	added := make(map[string]bool)
	for _, d := range subscribe {
		if st.subs[d.raw] != nil || added[d.raw] {
			continue
		}
		added[d.raw] = true
		if n++; n > st.srv.cfg.MaxSubscriptions {
			return status.Error(codes.ResourceExhausted, fmt.Sprintf("%v: subscribing to %q would make %d, more than the %d allowed",
				ErrTooManySubscriptions, d.raw, n, st.srv.cfg.MaxSubscriptions))
		}
	}
	return nil
}

// drop ends subscription raw.
func (st *stream) drop(raw string, sub *subscription) {
	delete(st.subs, raw)
	rest := slices.DeleteFunc(st.held[sub.ans], func(r string) bool { return r == raw })
	if len(rest) == 0 {
		delete(st.held, sub.ans)
	} else {
		st.held[sub.ans] = rest
	}
	st.srv.answers.release(sub.ans, st)
	st.srv.m.subscriptions.Dec()
}

// close ends every subscription, when the stream ends.
func (st *stream) close() {
	for raw, sub := range st.subs {
		st.drop(raw, sub)
	}
}

// flush gets the pending answers and sends the subscriptions whose state
// changed.
func (st *stream) flush() error {
	st.lastFlush = time.Now()
	st.mu.Lock()
	pending := st.pending
	st.pending = make(map[*answer]time.Time)
	st.mu.Unlock()
	for ans, at := range pending {
		raws := st.held[ans]
		if len(raws) == 0 {
			continue // unsubscribed since
		}
		state := st.srv.answers.get(ans)
		for _, raw := range raws {
			sub := st.subs[raw]
			if sub.last == state {
				continue // recomputed, unchanged
			}
			sub.last = state
			if err := st.ws.Send(&discoveryv1.WatchResponse{Destination: raw, State: state}); err != nil {
				return err
			}
			st.srv.m.updates.WithLabelValues("change").Inc()
			st.srv.m.delay.Observe(time.Since(at).Seconds())
		}
	}
	return nil
}

// dirty marks ans as changed since the event at at and wakes run. It is
// called on informers' goroutines, and may be called after the stream
// ended.
func (st *stream) dirty(ans *answer, at time.Time) {
	st.mu.Lock()
	if first, ok := st.pending[ans]; !ok || at.Before(first) {
		st.pending[ans] = at
	}
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}
