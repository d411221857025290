package authz_test

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// noUpstream is an Upstream for a router that is built, never used.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request, upstream.Endpoint, upstream.Protocol) (*http.Response, error) {
	return nil, errors.New("no upstream in this test")
}

// TestLoader: the filter is registered as "authz", the documented YAML
// loads, and the loader refuses it in the outbound chain.
func TestLoader(t *testing.T) {
	env := func(d filters.Direction) filters.Env {
		return filters.Env{Direction: d, Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now,
			Route: func(dst netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: dst} }, Upstream: noUpstream{}}
	}
	f, err := configfile.Parse([]byte(`
inbound:
  filters:
    - authz:
        allow:
          - spiffe://cluster.local/ns/shop/sa/frontend
          - { id: "spiffe://cluster.local/ns/ops/*" }
          - { id: "spiffe://cluster.local/*", methods: [GET, HEAD], paths: ["/public/*", /healthz] }
        deny:
          - { id: "*", paths: ["/admin/*"] }
outbound:
  filters:
    - authz: { allow: ["*"] }
`), builtin.Registry())
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	in, err := configfile.Build(f.Inbound, env(filters.Inbound))
	if err != nil {
		t.Fatalf("Build inbound: %v", err)
	}
	if err := in.AuthorizeConn(""); err == nil {
		t.Error("inbound chain: AuthorizeConn(\"\") = nil, want authz's refusal")
	}
	_, err = configfile.Build(f.Outbound, env(filters.Outbound))
	const want = "outbound.filters[0].authz: authz polices callers by their SPIFFE ID, which only inbound requests carry: it may only be used in the inbound chain"
	if err == nil || err.Error() != want {
		t.Errorf("Build outbound = %v\nwant                 %s", err, want)
	}
}
