package retry

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Limits and defaults of Config.
const (
	// MaxAttempts is the most attempts Config.Attempts may allow.
	MaxAttempts = 10
	// DefaultBackoff is the base backoff when Config.Backoff is zero,
	// Envoy's.
	DefaultBackoff = 25 * time.Millisecond
	// MaxBackoff is the largest Config.Backoff: a longer wait outlasts any
	// sensible request time-out.
	MaxBackoff = time.Minute
)

// Config is the retry filter's configuration:
//
//	retry:
//	  attempts: 2
//	  on: [connect-failure, refused-stream, reset, 5xx, gateway-error, "503"]
//	  perTryTimeout: 2s
//	  backoff: 25ms
type Config struct {
	// Attempts is how many times a request may be sent in all, the first
	// time included: 1 to MaxAttempts. 1 turns retries off (and keeps
	// PerTryTimeout).
	Attempts int `json:"attempts"`
	// On lists the outcomes of an attempt that make the filter try again,
	// at least one:
	//
	//	connect-failure  no connection to the upstream could be made
	//	refused-stream   the HTTP/2 upstream refused the stream unprocessed
	//	reset            the connection or stream closed before a response
	//	5xx              any status 500-599, the router's own included
	//	gateway-error    status 502, 503 or 504
	//	"409"            that status (quoted, 400-599)
	//
	// The router answers a connect failure or a refused stream with 503, a
	// reset with 503, a protocol error with 502 and a passed deadline
	// (PerTryTimeout's included) with 504, so 5xx and gateway-error cover
	// those too.
	On []string `json:"on"`
	// PerTryTimeout, when more than zero, bounds each attempt on its own;
	// the request's own deadline (the timeout filter's, when it runs before
	// this one) still wins.
	PerTryTimeout filters.Duration `json:"perTryTimeout"`
	// Backoff is the base of the wait between attempts, DefaultBackoff when
	// zero, at most MaxBackoff.
	Backoff filters.Duration `json:"backoff"`
}

var _ filters.Config = (*Config)(nil)

// conditionNames is how Build's errors list the conditions.
const conditionNames = `connect-failure, refused-stream, reset, 5xx, gateway-error or a status code such as "503"`

// Build validates c and returns the filter.
func (c *Config) Build(filters.Env) (filters.Filter, error) {
	if c.Attempts < 1 || c.Attempts > MaxAttempts {
		return nil, filters.Invalid("attempts", "must be 1-%d, got %d", MaxAttempts, c.Attempts)
	}
	if len(c.On) == 0 {
		return nil, filters.Invalid("on", "required, one or more of %s", conditionNames)
	}
	var on conditions
	for i, s := range c.On {
		if err := on.add(s); err != nil {
			return nil, filters.Within("on["+strconv.Itoa(i)+"]", err)
		}
	}
	if d := c.PerTryTimeout.Std(); d < 0 {
		return nil, filters.Invalid("perTryTimeout", "must not be negative, got %s", d)
	}
	backoff := c.Backoff.Std()
	switch {
	case backoff < 0:
		return nil, filters.Invalid("backoff", "must not be negative, got %s", backoff)
	case backoff > MaxBackoff:
		return nil, filters.Invalid("backoff", "must be at most %s, got %s", MaxBackoff, backoff)
	case backoff == 0:
		backoff = DefaultBackoff
	}
	return &Retry{
		attempts: c.Attempts,
		on:       on,
		perTry:   c.PerTryTimeout.Std(),
		backoff:  backoff,
		sleep:    sleep,
		rand:     rand.Int64N,
	}, nil
}

// conditions is Config.On compiled.
type conditions struct {
	failures [upstream.Refused + 1]bool // by upstream.Kind
	status   [600]bool
}

func (c *conditions) add(s string) error {
	switch s {
	case "connect-failure":
		c.failures[upstream.ConnectFailure] = true
	case "refused-stream":
		c.failures[upstream.Refused] = true
	case "reset":
		c.failures[upstream.Reset] = true
	case "5xx":
		for code := 500; code < 600; code++ {
			c.status[code] = true
		}
	case "gateway-error":
		c.status[http.StatusBadGateway] = true
		c.status[http.StatusServiceUnavailable] = true
		c.status[http.StatusGatewayTimeout] = true
	default:
		if !isStatus(s) {
			return filters.Invalid("", "%q is not %s", s, conditionNames)
		}
		code, _ := strconv.Atoi(s)
		if code < 400 || code > 599 {
			return filters.Invalid("", "status code must be 400-599, got %d", code)
		}
		c.status[code] = true
	}
	return nil
}

// isStatus reports whether s is three digits.
func isStatus(s string) bool {
	return len(s) == 3 && '0' <= s[0] && s[0] <= '9' && '0' <= s[1] && s[1] <= '9' && '0' <= s[2] && s[2] <= '9'
}

// match reports whether an attempt that failed with failure (zero: it did
// not fail at the upstream) and was answered with status (0: none) is one
// of the conditions.
func (c *conditions) match(failure upstream.Kind, status int) bool {
	if int(failure) < len(c.failures) && c.failures[failure] {
		return true
	}
	return status > 0 && status < len(c.status) && c.status[status]
}

// unsent reports whether the conditions can match an attempt that never
// reached the application: a connect failure or a refused stream, which
// the router answers with 503.
func (c *conditions) unsent() bool {
	return c.failures[upstream.ConnectFailure] || c.failures[upstream.Refused] || c.status[http.StatusServiceUnavailable]
}
