// Package builtin lists the filters pillion ships, by the names the config
// file uses for them.
package builtin

import (
	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/router"
)

// Registry returns a new registry of every built-in filter.
func Registry() filters.Registry {
	return filters.Registry{
		"router": func() filters.Config { return &router.Config{} },
	}
}
