// Package retry is the filter that sends a request to the upstream again
// when an attempt fails in one of the ways its config names, as long as
// doing so is safe: the body can be sent again, and the application either
// never saw the request or is fine seeing it twice.
package retry

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Retry makes up to the configured number of attempts at a request. An
// attempt is retriable when it matches one of the conditions of Config.On,
// the request's context is still live, and the request is safe to send
// again:
//
//   - Its body can be sent again: there is none, or the attempts so far
//     have read at most MaxReplayBody bytes of it. The filter does not wait
//     for the body before the first attempt, which would stall a streaming
//     request: it passes the body on as the upstream reads it and keeps a
//     copy of what was read. Once the body turns out longer, or reading it
//     fails, the copy is dropped and the attempt reading it is the last
//     one, its body streaming on. (A connect failure, which reads no body,
//     is retried whatever the body's length.) The filter never holds more
//     than MaxReplayBody bytes of a body, plus the one that shows it is
//     longer.
//   - Its method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or
//     the attempt failed with a connect failure or a refused stream, which
//     means nothing reached the application. So a POST is retried on a
//     connect failure (when On names connect-failure, 5xx, gateway-error or
//     "503"), never on a reset or a 503 from the application.
//   - It is not an upgrade (Info.Upgrade != ""): those go through once,
//     without the per-try time-out.
//
// Each attempt but the last gets a ResponseWriter that keeps the response
// headers back until the status is known. A retriable attempt's response is
// then discarded whole; any other is passed on, and the filter stops. The
// last attempt writes straight through; when it is retriable too, the
// filter adds the flag URX. 1xx informational responses go straight to the
// client whatever the attempt's fate.
//
// Every attempt but the last gets a copy of the request (headers, URL) as
// it reached the filter, so that what later filters change in one attempt
// does not leak into the next. Every attempt starts with the response flags
// the filters before this one had recorded and no upstream failure. Between attempts the
// filter waits Envoy's fully jittered exponential backoff: a random time
// below (2^n - 1) x Backoff before retry n, at most 10 x Backoff. When the
// request's context ends during the wait the filter answers 504 with flag
// UT (deadline passed), or with flag DC and panic(http.ErrAbortHandler)
// (client gone), as the router does.
//
// Retry is immutable and safe for concurrent use.
type Retry struct {
	attempts int
	on       conditions
	perTry   time.Duration // 0: none
	backoff  time.Duration
	// sleep waits d or until ctx ends, and then returns ctx.Err(); rand
	// returns a random number in [0, n). Tests replace them.
	sleep func(ctx context.Context, d time.Duration) error
	rand  func(n int64) int64
}

var _ filters.Filter = (*Retry)(nil)

// ServeHTTP runs next, again and again while the attempt is retriable and
// attempts remain.
func (f *Retry) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	info := filters.FromContext(r.Context())
	if info.Upgrade != "" {
		next.ServeHTTP(w, r)
		return
	}
	safe := idempotent(r.Method)
	if f.attempts == 1 || !safe && !f.on.unsent() {
		f.once(w, r, next)
		return
	}
	a := attempt{info: info, safe: safe}
	if r.Body != nil && r.Body != http.NoBody {
		a.body = newReplay(r.Body)
	}
	f.serve(w, r, next, a)
}

// attempt is what every attempt at one request shares.
type attempt struct {
	info *filters.Info
	safe bool    // idempotent method
	body *replay // nil: no body
}

// retriable reports whether an attempt at r that was answered with status
// may be retried.
func (f *Retry) retriable(r *http.Request, a attempt, status int) bool {
	if r.Context().Err() != nil {
		return false
	}
	failure := a.info.UpstreamFailure()
	if !a.safe && failure != upstream.ConnectFailure && failure != upstream.Refused {
		return false
	}
	return f.on.match(failure, status)
}

// serve makes the attempts at r, whose body is a.body.
func (f *Retry) serve(w http.ResponseWriter, r *http.Request, next http.Handler, a attempt) {
	flags := a.info.Flags()
	base := w.Header().Clone()
	for n := 1; ; n++ {
		if n > 1 {
			a.info.ClearFlags()
			a.info.AddFlags(flags)
		}
		a.info.SetUpstreamFailure(0)
		if n == f.attempts {
			f.last(w, r, next, a)
			return
		}
		if !f.try(w, r, next, a, base) {
			return
		}
		if err := f.sleep(r.Context(), f.delay(n)); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				filters.Reply(w, r, http.StatusGatewayTimeout, filters.UpstreamTimeout, "request timeout while waiting to retry")
				return
			}
			// The client went away: as the router does, answer nothing,
			// not even net/http's implicit 200.
			a.info.AddFlags(filters.DownstreamDisconnect)
			panic(http.ErrAbortHandler)
		}
	}
}

// try makes an attempt that may be retried and reports whether it was
// (its response discarded). base is the response header as it was before
// the first attempt.
func (f *Retry) try(w http.ResponseWriter, r *http.Request, next http.Handler, a attempt, base http.Header) bool {
	ctx, cancel := f.tryContext(r.Context())
	defer cancel()
	req := r.Clone(ctx)
	// Clone copied the trailer map while it was empty; the server fills
	// r's when the body ends, and the attempt must send those values.
	req.Trailer = r.Trailer
	a.setBody(req)
	hw := &holdWriter{w: w, header: base.Clone(), retriable: func(status int) bool {
		return f.retriable(r, a, status) && a.retire()
	}}
	next.ServeHTTP(hw, req)
	discarded := hw.finish()
	if discarded && hw.informed {
		replaceHeader(w.Header(), base)
	}
	return discarded
}

// last makes the last attempt, and flags URX when it was retriable.
func (f *Retry) last(w http.ResponseWriter, r *http.Request, next http.Handler, a attempt) {
	ctx, cancel := f.tryContext(r.Context())
	defer cancel()
	req := r.WithContext(ctx)
	a.setBody(req)
	o := filters.Observe(w)
	next.ServeHTTP(o, req)
	if o.Status() != 0 && f.retriable(r, a, o.Status()) && a.replayable() {
		a.info.AddFlags(filters.RetryLimitExceeded)
	}
}

// once makes the only attempt at r.
func (f *Retry) once(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if f.perTry == 0 {
		next.ServeHTTP(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), f.perTry)
	defer cancel()
	next.ServeHTTP(w, r.WithContext(ctx))
}

// tryContext returns the context of one attempt.
func (f *Retry) tryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if f.perTry == 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, f.perTry)
}

// delay returns the wait before retry n (1 for the first).
func (f *Retry) delay(n int) time.Duration {
	ceiling := f.backoff * time.Duration(min(1<<n-1, 10))
	return time.Duration(f.rand(int64(ceiling)))
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// idempotent reports whether a request with method may be sent twice
// (RFC 9110 section 9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// setBody gives req a reader of the whole body, when there is one.
func (a attempt) setBody(req *http.Request) {
	if a.body != nil {
		req.Body, req.GetBody = a.body.reader(), nil
	}
}

// replayable reports whether another attempt could send the body again.
func (a attempt) replayable() bool { return a.body == nil || a.body.replayable() }

// retire ends the current attempt's use of the body, so that the next one
// can send it again; it returns false, when the body cannot be.
func (a attempt) retire() bool { return a.body == nil || a.body.retire() }
