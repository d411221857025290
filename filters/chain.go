package filters

import (
	"net/http"
)

// Chain runs filters in order and ends at a terminal handler. It is
// compiled once and immutable: safe for concurrent use.
type Chain struct {
	names   []string
	handler http.Handler
}

// Named is a filter with the name it has in the config file.
type Named struct {
	Name   string
	Filter Filter
}

// NewChain compiles fs, first to last, in front of terminal.
func NewChain(terminal http.Handler, fs ...Named) *Chain {
	h := terminal
	names := make([]string, len(fs))
	for i := len(fs) - 1; i >= 0; i-- {
		f, next := fs[i].Filter, h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.ServeHTTP(w, r, next) })
		names[i] = fs[i].Name
	}
	return &Chain{names: names, handler: h}
}

// ServeHTTP runs the chain for r, whose context must carry an Info.
func (c *Chain) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.handler.ServeHTTP(w, r) }

// Names returns the filters' names in order, the terminal not included.
func (c *Chain) Names() []string { return append([]string(nil), c.names...) }
