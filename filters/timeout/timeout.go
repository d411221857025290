// Package timeout is the filter that bounds how long a request may take: it
// gives the rest of the chain a context with a deadline, and the router
// answers 504 with flag UT when the deadline passes before the upstream
// has answered (or cuts the response short when it passes while the body
// is streaming).
package timeout

import (
	"context"
	"net/http"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// Config is the timeout filter's configuration:
//
//	timeout:
//	  request: 15s
type Config struct {
	// Request is how long the rest of the chain may take, from when this
	// filter runs until the response is complete. Required, more than 0.
	Request filters.Duration `json:"request"`
}

var _ filters.Config = (*Config)(nil)

// Build validates c and returns the filter.
func (c *Config) Build(filters.Env) (filters.Filter, error) {
	switch d := c.Request.Std(); {
	case d == 0:
		return nil, filters.Invalid("request", "required, a duration such as \"15s\"")
	case d < 0:
		return nil, filters.Invalid("request", "must be more than 0, got %s", d)
	}
	return &Timeout{d: c.Request.Std()}, nil
}

// Timeout runs the rest of the chain with a context whose deadline is the
// configured time away; an earlier deadline already on the request wins.
//
// An upgrade request (Info.Upgrade != "", a WebSocket for instance) runs
// without the deadline: the router hijacks its connection, which lives as
// long as both ends keep it, and a request time-out would cut every such
// connection at the same age. Envoy's route time-out does not apply to
// upgrades either.
//
// Timeout is immutable and safe for concurrent use.
type Timeout struct {
	d time.Duration
}

var _ filters.Filter = (*Timeout)(nil)

// ServeHTTP runs next with the deadline.
func (t *Timeout) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if filters.FromContext(r.Context()).Upgrade != "" {
		next.ServeHTTP(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), t.d)
	defer cancel()
	next.ServeHTTP(w, r.WithContext(ctx))
}
