// Package ratelimit is the HTTP filter that caps the rate of requests with
// a token bucket: the bucket holds up to Burst tokens, refills at
// RequestsPerSecond, and each request takes one; a request that finds the
// bucket empty is answered 429 Too Many Requests by the proxy (response
// flag RL) and never reaches the next filter.
//
// The proxy builds each filter once per direction, so each direction has
// its own bucket, shared by all of its connections. A config reload builds
// a new, full bucket.
package ratelimit

import (
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// MaxRequestsPerSecond is the largest rate Config accepts.
const MaxRequestsPerSecond = 1e9

// Config is the ratelimit filter's configuration.
type Config struct {
	// RequestsPerSecond is the rate at which the bucket refills; it may
	// be a fraction (0.5 is one request every two seconds). It must be
	// more than 0 and at most MaxRequestsPerSecond.
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// Burst is how many tokens the bucket holds: the most requests let
	// through at once after a quiet spell. Nil means RequestsPerSecond
	// rounded up; it must be at least 1.
	Burst *int `json:"burst,omitempty"`
}

var (
	_ filters.Config = (*Config)(nil)
	_ filters.Filter = (*RateLimit)(nil)
)

// Build validates c and returns a *RateLimit with a full bucket, reading
// the time from env.Now.
func (c *Config) Build(env filters.Env) (filters.Filter, error) {
	rate := c.RequestsPerSecond
	switch {
	case !(rate > 0): // NaN too
		return nil, filters.Invalid("requestsPerSecond", "must be more than 0, got %v", rate)
	case rate > MaxRequestsPerSecond:
		return nil, filters.Invalid("requestsPerSecond", "must be at most %v, got %v", float64(MaxRequestsPerSecond), rate)
	}
	burst := int(math.Ceil(rate))
	if c.Burst != nil {
		if burst = *c.Burst; burst < 1 {
			return nil, filters.Invalid("burst", "must be at least 1, got %d", burst)
		}
	}
	return &RateLimit{
		now:    env.Now,
		rate:   rate,
		burst:  float64(burst),
		tokens: float64(burst),
		last:   env.Now(),
	}, nil
}

// RateLimit is the built filter: one token bucket. It is safe for
// concurrent use.
type RateLimit struct {
	now   func() time.Time
	rate  float64 // tokens per second
	burst float64 // capacity

	mu     sync.Mutex
	tokens float64
	last   time.Time // when tokens was last topped up
}

// ServeHTTP calls next when the bucket has a token, and takes it; else it
// answers 429 with filters.Reply and the RateLimited flag.
func (l *RateLimit) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if !l.allow() {
		filters.Reply(w, r, http.StatusTooManyRequests, filters.RateLimited, "rate limited")
		return
	}
	next.ServeHTTP(w, r)
}

// allow takes a token if there is one.
func (l *RateLimit) allow() bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A clock that steps back adds nothing, and last stays the latest
	// time seen, so no interval is counted twice.
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.burst, l.tokens+d.Seconds()*l.rate)
		l.last = now
	}
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
