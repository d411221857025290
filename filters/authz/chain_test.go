package authz_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/authz"
	"github.com/pillionmesh/pillion/filters/headers"
)

const frontend = "spiffe://cluster.local/ns/shop/sa/frontend"

var inbound = filters.Env{Direction: filters.Inbound, Log: zap.NewNop(), Now: time.Now}

func build(t *testing.T, c filters.Config) filters.Filter {
	t.Helper()
	f, err := c.Build(inbound)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return f
}

// connCheck is a filter that polices TCP connections by a fixed answer
// and counts how often it is asked.
type connCheck struct {
	err   error
	asked int
}

func (c *connCheck) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(w, r)
}

func (c *connCheck) AuthorizeConn(string) error { c.asked++; return c.err }

func TestChainAuthorizeConn(t *testing.T) {
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	hdr := filters.Named{Name: "headers", Filter: build(t, &headers.Config{})}
	az := filters.Named{Name: "authz", Filter: build(t, &authz.Config{Allow: []authz.Rule{{ID: frontend}}})}

	t.Run("no filters", func(t *testing.T) {
		if err := filters.NewChain(app).AuthorizeConn(""); err != nil {
			t.Errorf("AuthorizeConn = %v, want nil", err)
		}
	})
	t.Run("without authz", func(t *testing.T) {
		if err := filters.NewChain(app, hdr).AuthorizeConn(""); err != nil {
			t.Errorf("AuthorizeConn = %v, want nil", err)
		}
	})
	t.Run("with authz", func(t *testing.T) {
		var c filters.ConnAuthorizer = filters.NewChain(app, hdr, az)
		if err := c.AuthorizeConn(frontend); err != nil {
			t.Errorf("AuthorizeConn(frontend) = %v, want nil", err)
		}
		err := c.AuthorizeConn("spiffe://cluster.local/ns/cart/sa/cart")
		const want = `authz: peer "spiffe://cluster.local/ns/cart/sa/cart" denied: no allow rule matches a TCP connection`
		if err == nil || err.Error() != want {
			t.Fatalf("AuthorizeConn(cart) = %v\nwant                  %s", err, want)
		}
		if inner := az.Filter.(filters.ConnAuthorizer).AuthorizeConn("spiffe://cluster.local/ns/cart/sa/cart"); errors.Unwrap(err).Error() != inner.Error() {
			t.Errorf("chain's error wraps %q, want the filter's %q", errors.Unwrap(err), inner)
		}
	})
	t.Run("first refusal wins", func(t *testing.T) {
		errFirst := errors.New("first says no")
		first, second := &connCheck{err: errFirst}, &connCheck{}
		c := filters.NewChain(app, filters.Named{Name: "one", Filter: first}, az, filters.Named{Name: "two", Filter: second})
		err := c.AuthorizeConn(frontend)
		if !errors.Is(err, errFirst) || err.Error() != "one: first says no" {
			t.Errorf("AuthorizeConn = %v, want one's error", err)
		}
		if second.asked != 0 {
			t.Error("a filter after the refusing one was asked")
		}
		first.err = nil
		if err := c.AuthorizeConn(frontend); err != nil {
			t.Errorf("all allow: AuthorizeConn = %v, want nil", err)
		}
		if first.asked != 2 || second.asked != 1 {
			t.Errorf("asked %d and %d times, want 2 and 1", first.asked, second.asked)
		}
		if err := c.AuthorizeConn(""); err == nil || err.Error() != "authz: unauthenticated peer (no mTLS) denied: no allow rule matches a TCP connection" {
			t.Errorf("authz in the middle: AuthorizeConn = %v", err)
		}
	})
	t.Run("HTTP through the chain", func(t *testing.T) {
		c := filters.NewChain(app, hdr, az)
		for peer, want := range map[string]int{frontend: http.StatusNoContent, "": http.StatusForbidden} {
			r := httptest.NewRequest(http.MethodGet, "http://app/", nil)
			r = r.WithContext(filters.NewContext(r.Context(), &filters.Info{Direction: filters.Inbound, Peer: peer}))
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != want {
				t.Errorf("peer %q: status %d, want %d", peer, w.Code, want)
			}
		}
	})
}
