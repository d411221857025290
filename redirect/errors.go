package redirect

import "errors"

// ErrUnsupported is returned, off Linux, by everything that needs netfilter:
// NewTables, IPv6Enabled, OriginalDst and the inbound source address
// functions.
var ErrUnsupported = errors.New("redirect: transparent capture needs Linux netfilter")
