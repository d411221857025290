// Package authz is the inbound filter that polices callers by their SPIFFE
// ID (filters.Info.Peer), with the semantics of Istio's
// AuthorizationPolicy:
//
//  1. Deny rules are checked first: a request that matches any of them is
//     denied.
//  2. Then, if there are allow rules, the request must match at least one
//     of them; with no allow rules, every request not denied is allowed.
//
// A rule matches when its ID pattern matches the caller's SPIFFE ID, and
// (it lists no methods, or the request's method is listed), and (it lists
// no paths, or the request's path matches one). A denied request is
// answered 403 Forbidden with the body "RBAC: access denied" (Envoy's) and
// response flag UAEX, and never reaches the next filter; a debug line
// logs the peer, method, path and the rule that denied it.
//
// # Unauthenticated callers
//
// A caller that did not come over mTLS (plaintext let through in
// PERMISSIVE mode) has no SPIFFE ID, and matches no ID pattern, not even
// "*". So it is denied by any policy with allow rules, and allowed by a
// policy with deny rules only: a deny rule for "*" does not stop it. To
// refuse callers without an identity, run the inbound listener in STRICT
// mode, which refuses plaintext before any filter runs, or write allow
// rules.
//
// # Paths
//
// Paths are matched against the request's decoded URL path (r.URL.Path,
// so "/%61dmin" is "/admin"), without the query. A path with dot segments
// or doubled slashes ("/public/../admin", "//admin") may mean its
// normalised form to the application: for such a path, a deny rule
// matches if the path as sent or its normalised form matches, and an
// allow rule matches only if both do. So neither form can be used to slip
// past a rule.
//
// # Opaque TCP
//
// Authz is a filters.ConnAuthorizer: for a connection that carries no HTTP
// (an opaque TCP stream), the proxy asks AuthorizeConn before relaying it,
// and closes it when refused. With no method or path to match, Istio's
// rules for TCP apply, which err on the safe side: an allow rule that
// lists methods or paths never matches a TCP connection (it needs HTTP),
// and a deny rule that lists methods or paths is applied on its ID alone
// (it denies more, never less).
package authz

import (
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
)

// Authz is the built filter. It is immutable and safe for concurrent use.
type Authz struct {
	allow, deny []rule
	log         *zap.Logger
}

var (
	_ filters.Filter         = (*Authz)(nil)
	_ filters.ConnAuthorizer = (*Authz)(nil)
)

// rule is a validated Rule.
type rule struct {
	name    string // where it is in the config, "deny[0]"
	id      pattern
	methods []string  // none: any
	paths   []pattern // none: any
}

// pattern matches a string exactly, or by prefix. The ID pattern "*" is
// the empty prefix.
type pattern struct {
	value  string
	prefix bool
}

func (p pattern) match(s string) bool {
	if p.prefix {
		return strings.HasPrefix(s, p.value)
	}
	return s == p.value
}

// matchID reports whether the rule's ID pattern matches peer; no pattern
// matches an unauthenticated caller.
func (r *rule) matchID(peer string) bool { return peer != "" && r.id.match(peer) }

// http reports whether r needs an HTTP request: it lists methods or paths.
func (r *rule) http() bool { return len(r.methods)+len(r.paths) > 0 }

// request is what rules match in an HTTP request.
type request struct {
	peer, method string
	path, clean  string // as sent, and normalised (the same when it is)
}

// match reports whether r matches q. With deny, a path rule matches when
// either form of the path does; else only when both do.
func (r *rule) match(q *request, deny bool) bool {
	if !r.matchID(q.peer) {
		return false
	}
	if len(r.methods) > 0 && !slices.Contains(r.methods, q.method) {
		return false
	}
	if len(r.paths) == 0 {
		return true
	}
	sent := slices.ContainsFunc(r.paths, func(p pattern) bool { return p.match(q.path) })
	if q.clean == q.path {
		return sent
	}
	clean := slices.ContainsFunc(r.paths, func(p pattern) bool { return p.match(q.clean) })
	if deny {
		return sent || clean
	}
	return sent && clean
}

// decide reports whether q may pass and, when not, why: the rule that
// denied it, or that no allow rule matched.
func (a *Authz) decide(q *request) (ok bool, why string) {
	for i := range a.deny {
		if a.deny[i].match(q, true) {
			return false, a.deny[i].name
		}
	}
	if len(a.allow) == 0 {
		return true, ""
	}
	for i := range a.allow {
		if a.allow[i].match(q, false) {
			return true, ""
		}
	}
	return false, "no allow rule matched"
}

// ServeHTTP calls next when the policy allows r; else it answers 403 with
// filters.Reply and the Unauthorized flag, and logs why at debug level.
func (a *Authz) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	q := request{
		peer:   filters.FromContext(r.Context()).Peer,
		method: r.Method,
		path:   r.URL.Path,
		clean:  normalize(r.URL.Path),
	}
	if ok, why := a.decide(&q); !ok {
		if ce := a.log.Check(zap.DebugLevel, "authz: request denied"); ce != nil {
			ce.Write(zap.String("peer", q.peer), zap.String("method", q.method),
				zap.String("path", q.path), zap.String("rule", why))
		}
		filters.Reply(w, r, http.StatusForbidden, filters.Unauthorized, "RBAC: access denied")
		return
	}
	next.ServeHTTP(w, r)
}

// AuthorizeConn reports whether peer may open an opaque TCP connection:
// nil, or an error naming the peer and the reason. A deny rule is applied
// on its ID alone; an allow rule that lists methods or paths never
// matches.
func (a *Authz) AuthorizeConn(peer string) error {
	for i := range a.deny {
		r := &a.deny[i]
		if !r.matchID(peer) {
			continue
		}
		if r.http() {
			return fmt.Errorf("%s denied by %s (applied on its id alone: a TCP connection has no method or path)", who(peer), r.name)
		}
		return fmt.Errorf("%s denied by %s", who(peer), r.name)
	}
	if len(a.allow) == 0 {
		return nil
	}
	for i := range a.allow {
		if r := &a.allow[i]; !r.http() && r.matchID(peer) {
			return nil
		}
	}
	return fmt.Errorf("%s denied: no allow rule matches a TCP connection", who(peer))
}

func who(peer string) string {
	if peer == "" {
		return "unauthenticated peer (no mTLS)"
	}
	return fmt.Sprintf("peer %q", peer)
}

// normalize returns p with dot segments resolved and doubled slashes
// merged, keeping a trailing slash; p itself when it is already so (or
// is not an absolute path, like the "*" of OPTIONS *).
func normalize(p string) string {
	if !strings.HasPrefix(p, "/") || (!strings.Contains(p, "//") && !strings.Contains(p, "/.")) {
		return p
	}
	c := path.Clean(p)
	if c != "/" && (strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")) {
		c += "/"
	}
	return c
}
