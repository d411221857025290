// Package builtin lists the filters pillion ships, by the names the config
// file uses for them.
package builtin

import (
	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/accesslog"
	"github.com/pillionmesh/pillion/filters/authz"
	"github.com/pillionmesh/pillion/filters/fault"
	"github.com/pillionmesh/pillion/filters/headers"
	"github.com/pillionmesh/pillion/filters/ratelimit"
	"github.com/pillionmesh/pillion/filters/requestid"
	"github.com/pillionmesh/pillion/filters/retry"
	"github.com/pillionmesh/pillion/filters/router"
	"github.com/pillionmesh/pillion/filters/timeout"
)

// Registry returns a new registry of every built-in filter.
func Registry() filters.Registry {
	return filters.Registry{
		"accesslog": func() filters.Config { return &accesslog.Config{} },
		"authz":     func() filters.Config { return &authz.Config{} },
		"fault":     func() filters.Config { return &fault.Config{} },
		"headers":   func() filters.Config { return &headers.Config{} },
		"ratelimit": func() filters.Config { return &ratelimit.Config{} },
		"requestid": func() filters.Config { return &requestid.Config{} },
		"retry":     func() filters.Config { return &retry.Config{} },
		"router":    func() filters.Config { return &router.Config{} },
		"timeout":   func() filters.Config { return &timeout.Config{} },
	}
}
