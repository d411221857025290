package filters

import (
	"fmt"
	"net/http"
)

// Chain runs filters in order and ends at a terminal handler. It is
// compiled once and immutable: safe for concurrent use.
type Chain struct {
	names   []string
	handler http.Handler
	conn    []Named // the filters that are ConnAuthorizers, in order
}

var _ ConnAuthorizer = (*Chain)(nil)

// Named is a filter with the name it has in the config file.
type Named struct {
	Name   string
	Filter Filter
}

// NewChain compiles fs, first to last, in front of terminal. The filters
// that implement ConnAuthorizer are also kept, in order, for
// AuthorizeConn.
func NewChain(terminal http.Handler, fs ...Named) *Chain {
	h := terminal
	names := make([]string, len(fs))
	for i := len(fs) - 1; i >= 0; i-- {
		f, next := fs[i].Filter, h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.ServeHTTP(w, r, next) })
		names[i] = fs[i].Name
	}
	var conn []Named
	for _, f := range fs {
		if _, ok := f.Filter.(ConnAuthorizer); ok {
			conn = append(conn, f)
		}
	}
	return &Chain{names: names, handler: h, conn: conn}
}

// ServeHTTP runs the chain for r, whose context must carry an Info.
func (c *Chain) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.handler.ServeHTTP(w, r) }

// Names returns the filters' names in order, the terminal not included.
func (c *Chain) Names() []string { return append([]string(nil), c.names...) }

// AuthorizeConn asks the chain's filters that implement ConnAuthorizer, in
// order, whether peer may open an opaque TCP connection. It returns nil
// when all of them allow it, or when there are none; else the first
// refusal, prefixed with the refusing filter's name ("authz: ...") and
// wrapping its error.
func (c *Chain) AuthorizeConn(peer string) error {
	for _, f := range c.conn {
		if err := f.Filter.(ConnAuthorizer).AuthorizeConn(peer); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	return nil
}
