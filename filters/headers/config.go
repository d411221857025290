package headers

import (
	"fmt"
	"maps"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
)

// Config is the headers filter's configuration. The zero Config is valid
// and changes nothing.
type Config struct {
	// Request are the changes made to the request before it goes on.
	Request Changes `json:"request,omitzero"`
	// Response are the changes made to the response before it is written.
	Response Changes `json:"response,omitzero"`
}

// Changes are the header changes of one direction. Names are
// case-insensitive; a name appears at most once in each of Set and Add,
// and never in Remove as well as in Set or Add. Names must be valid header
// names and not hop-by-hop (Connection, Keep-Alive, Proxy-Authenticate,
// Proxy-Authorization, Proxy-Connection, TE, Trailer, Transfer-Encoding,
// Upgrade), Host, Content-Length or an HTTP/2 pseudo-header (":path");
// values must be valid field values without leading or trailing
// whitespace. An empty value is allowed.
type Changes struct {
	// Set replaces every value of each named header with the given one.
	Set map[string]string `json:"set,omitempty"`
	// Add appends the given value to each named header's values.
	Add map[string]string `json:"add,omitempty"`
	// Remove deletes every value of each named header.
	Remove []string `json:"remove,omitempty"`
}

var (
	_ filters.Config = (*Config)(nil)
	_ filters.Filter = (*Headers)(nil)
)

// Build validates c and returns a *Headers. It reports the first invalid
// field, in the order request then response, set then add then remove,
// names sorted. env is not used.
func (c *Config) Build(filters.Env) (filters.Filter, error) {
	req, err := c.Request.compile("request")
	if err != nil {
		return nil, err
	}
	resp, err := c.Response.compile("response")
	if err != nil {
		return nil, err
	}
	return &Headers{request: req, response: resp}, nil
}

// compile validates ch, whose fields are at dir ("request", "response").
func (ch *Changes) compile(dir string) (*edits, error) {
	e := &edits{}
	named := make(map[string]string) // canonical name -> "set" or "add", for Remove
	for _, op := range []struct {
		name string
		m    map[string]string
		out  *[]field
	}{{"set", ch.Set, &e.set}, {"add", ch.Add, &e.add}} {
		seen := make(map[string]string, len(op.m)) // canonical -> as written
		for _, name := range slices.Sorted(maps.Keys(op.m)) {
			path := fmt.Sprintf("%s.%s[%q]", dir, op.name, name)
			key, err := checkName(name)
			if err != nil {
				return nil, filters.Within(path, err)
			}
			if prev, ok := seen[key]; ok {
				return nil, filters.Invalid(path, "same header as %q", prev)
			}
			seen[key] = name
			if err := checkValue(op.m[name]); err != nil {
				return nil, filters.Within(path, err)
			}
			named[key] = op.name
			*op.out = append(*op.out, field{key, op.m[name]})
		}
	}
	for i, name := range ch.Remove {
		path := fmt.Sprintf("%s.remove[%d]", dir, i)
		key, err := checkName(name)
		if err != nil {
			return nil, filters.Within(path, err)
		}
		if op, ok := named[key]; ok {
			return nil, filters.Invalid(path, "%q is also in %s.%s; remove runs first, so this does nothing", name, dir, op)
		}
		if !slices.Contains(e.remove, key) {
			e.remove = append(e.remove, key)
		}
	}
	return e, nil
}

// checkName returns name canonicalised, or why a filter may not change
// it.
func checkName(name string) (string, error) {
	if strings.HasPrefix(name, ":") {
		return "", filters.Invalid("", "%q is an HTTP/2 pseudo-header, not a header a filter may change", name)
	}
	if !httpguts.ValidHeaderFieldName(name) {
		return "", filters.Invalid("", "%q is not a valid header name", name)
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	if filters.IsHopByHop(key) {
		return "", filters.Invalid("", "%q is hop-by-hop: it belongs to one connection, which the proxy manages", name)
	}
	switch key {
	case "Host":
		return "", filters.Invalid("", "%q is the request's authority, not a header a filter may change", name)
	case "Content-Length":
		return "", filters.Invalid("", "%q frames the body, which the proxy manages", name)
	}
	return key, nil
}

// checkValue says why v is not a field value (RFC 9110 section 5.5) that
// net/http writes unchanged: one with control characters other than tab,
// or with leading or trailing whitespace.
func checkValue(v string) error {
	if !httpguts.ValidHeaderFieldValue(v) {
		return filters.Invalid("", "%q is not a valid header value", v)
	}
	if strings.Trim(v, " \t") != v {
		return filters.Invalid("", "%q has leading or trailing whitespace, which net/http would drop", v)
	}
	return nil
}
