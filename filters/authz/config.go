package authz

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
)

// Config is the authz filter's configuration. At least one of Allow and
// Deny must have a rule.
//
//	authz:
//	  allow:
//	    - spiffe://cluster.local/ns/shop/sa/frontend
//	    - { id: "spiffe://cluster.local/*", methods: [GET, HEAD], paths: ["/public/*", /healthz] }
//	  deny:
//	    - { id: "*", paths: ["/admin/*"] }
type Config struct {
	// Allow are the rules of which a request must match one, when there
	// are any. Empty: every request that no Deny rule matches passes.
	Allow []Rule `json:"allow,omitempty"`
	// Deny are the rules of which a request must match none. They are
	// checked first.
	Deny []Rule `json:"deny,omitempty"`
}

// Rule matches a request when its ID matches the caller's SPIFFE ID, and
// the request's method is one of Methods (when there are any), and its
// path matches one of Paths (when there are any). In the config file a
// rule is a mapping with these keys, or a string: shorthand for a rule
// with that ID alone.
type Rule struct {
	// ID is the pattern the caller's SPIFFE ID must match: an exact
	// SPIFFE ID ("spiffe://cluster.local/ns/shop/sa/frontend"); a prefix,
	// a SPIFFE ID followed by "/*" ("spiffe://cluster.local/ns/shop/*"),
	// which matches the IDs below it; "spiffe://<trust domain>/*" for a
	// whole trust domain; or "*" for any authenticated caller. An
	// unauthenticated caller (no mTLS) matches no pattern, not even "*".
	// Required.
	ID string `json:"id"`
	// Methods are upper-case HTTP methods ("GET"), matched exactly.
	// Empty: any method.
	Methods []string `json:"methods,omitempty"`
	// Paths are URL paths starting with "/": exact ("/healthz"), or a
	// prefix when ending in "*" ("/public/*"). They are matched against
	// the request's decoded URL path, without the query; see the package
	// documentation on dot segments and doubled slashes. Empty: any path.
	Paths []string `json:"paths,omitempty"`
}

var (
	_ filters.Config   = (*Config)(nil)
	_ json.Unmarshaler = (*Config)(nil)
	_ json.Unmarshaler = (*Rule)(nil)
)

// UnmarshalJSON decodes c strictly (filters.DecodeStrict): a key other
// than allow and deny is an error, as is a value of the wrong type. Errors
// are *filters.FieldError naming the field within the filter
// ("allow[1].methods").
func (c *Config) UnmarshalJSON(b []byte) error {
	var out configFields
	if err := filters.DecodeStrict(b, &out, ""); err != nil {
		return err
	}
	*c = Config(out)
	return nil
}

// configFields is Config without its UnmarshalJSON, for DecodeStrict.
type configFields Config

// UnmarshalJSON decodes r from a string (the ID alone) or strictly from a
// mapping with the keys id, methods and paths. Errors are
// *filters.FieldError naming the field within the rule.
func (r *Rule) UnmarshalJSON(b []byte) error {
	switch k := filters.KindOf(b); k {
	case "string":
		var id string
		if err := json.Unmarshal(b, &id); err != nil {
			return filters.Invalid("", "%v", err)
		}
		*r = Rule{ID: id}
		return nil
	case "mapping":
		var out ruleFields
		if err := filters.DecodeStrict(b, &out, ""); err != nil {
			return err
		}
		*r = Rule(out)
		return nil
	default:
		return filters.Invalid("", "want a SPIFFE ID pattern or a mapping {id, methods, paths}, got %s", k)
	}
}

// ruleFields is Rule without its UnmarshalJSON, for DecodeStrict.
type ruleFields Rule

// Build validates c and returns an *Authz. It reports the first invalid
// field, deny rules before allow rules. env.Direction must be Inbound:
// only inbound requests carry the caller's identity. Denied requests are
// logged at debug level to env.Log.
func (c *Config) Build(env filters.Env) (filters.Filter, error) {
	if env.Direction != filters.Inbound {
		return nil, filters.Invalid("", "authz polices callers by their SPIFFE ID, which only inbound requests carry: it may only be used in the inbound chain")
	}
	if len(c.Allow)+len(c.Deny) == 0 {
		return nil, filters.Invalid("", "want at least one rule in allow or deny")
	}
	deny, err := compileRules(c.Deny, "deny")
	if err != nil {
		return nil, err
	}
	allow, err := compileRules(c.Allow, "allow")
	if err != nil {
		return nil, err
	}
	log := env.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Authz{allow: allow, deny: deny, log: log}, nil
}

func compileRules(rs []Rule, field string) ([]rule, error) {
	out := make([]rule, len(rs))
	for i, r := range rs {
		name := fmt.Sprintf("%s[%d]", field, i)
		c, err := r.compile(name)
		if err != nil {
			return nil, filters.Within(name, err)
		}
		out[i] = c
	}
	return out, nil
}

// compile validates r, which config calls name.
func (r *Rule) compile(name string) (rule, error) {
	id, err := compileID(r.ID)
	if err != nil {
		return rule{}, filters.Within("id", err)
	}
	out := rule{name: name, id: id}
	for i, m := range r.Methods {
		if err := checkMethod(m); err != nil {
			return rule{}, filters.Within(fmt.Sprintf("methods[%d]", i), err)
		}
		if !slices.Contains(out.methods, m) {
			out.methods = append(out.methods, m)
		}
	}
	for i, p := range r.Paths {
		pp, err := compilePath(p)
		if err != nil {
			return rule{}, filters.Within(fmt.Sprintf("paths[%d]", i), err)
		}
		out.paths = append(out.paths, pp)
	}
	return out, nil
}

// compileID validates an ID pattern.
func compileID(s string) (pattern, error) {
	switch {
	case s == "":
		return pattern{}, filters.Invalid("", `required: a SPIFFE ID, a SPIFFE ID followed by /* for the IDs below it, or "*" for any authenticated caller`)
	case s == "*":
		return pattern{prefix: true}, nil
	}
	base, prefix := strings.CutSuffix(s, "/*")
	if strings.Contains(base, "*") {
		return pattern{}, filters.Invalid("", `%q: "*" may only be the whole pattern or follow the last "/", as in "spiffe://cluster.local/ns/shop/*"`, s)
	}
	if _, err := spiffeid.FromString(base); err != nil {
		if prefix {
			return pattern{}, filters.Invalid("", "%q: %q before /* is not a SPIFFE ID: %v", s, base, err)
		}
		return pattern{}, filters.Invalid("", "%q: not a SPIFFE ID: %v", s, err)
	}
	if prefix {
		return pattern{value: base + "/", prefix: true}, nil
	}
	return pattern{value: s}, nil
}

// checkMethod says why m is not an upper-case HTTP method.
func checkMethod(m string) error {
	switch {
	case m == "*":
		return filters.Invalid("", `"*" is not a method: leave methods out to match any method`)
	case !httpguts.ValidHeaderFieldName(m): // a token, as a method is
		return filters.Invalid("", "%q is not an HTTP method", m)
	case strings.ToUpper(m) != m:
		return filters.Invalid("", "%q: methods are case-sensitive and upper-case, such as %q", m, strings.ToUpper(m))
	}
	return nil
}

// compilePath validates a path pattern. Its segments must be in normal
// form (no empty, "." or ".." segment) or it could never match a
// normalised path; the partial last segment of a prefix is exempt ("/.*"
// matches "/.env").
func compilePath(p string) (pattern, error) {
	if !strings.HasPrefix(p, "/") {
		if p == "*" {
			return pattern{}, filters.Invalid("", `"*" is not a path: leave paths out to match any path, or write "/*"`)
		}
		return pattern{}, filters.Invalid("", `%q: want a URL path starting with "/", such as "/api/*"`, p)
	}
	body, prefix := strings.CutSuffix(p, "*")
	switch {
	case strings.Contains(body, "*"):
		return pattern{}, filters.Invalid("", `%q: "*" may only end a path, to match the paths that start with what comes before it`, p)
	case strings.ContainsAny(body, "?#"):
		return pattern{}, filters.Invalid("", "%q: paths match the URL path alone, without query or fragment", p)
	}
	segs := strings.Split(body[1:], "/")
	for i, seg := range segs {
		last := i == len(segs)-1
		if (seg == "" && !last) || ((seg == "." || seg == "..") && !(last && prefix)) {
			return pattern{}, filters.Invalid("", `%q: has an empty, "." or ".." segment, which a normalised path never has`, p)
		}
	}
	return pattern{value: body, prefix: prefix}, nil
}
