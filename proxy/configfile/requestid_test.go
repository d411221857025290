package configfile

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/requestid"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// idRegistry is the test registry with the requestid filter.
func idRegistry() filters.Registry {
	reg := registry()
	reg[RequestIDName] = func() filters.Config { return &requestid.Config{} }
	return reg
}

// seenHeaders runs one request with header in through the chain of specs
// and returns the headers the upstream got.
func seenHeaders(t *testing.T, specs []Spec, in http.Header) http.Header {
	t.Helper()
	c, err := Build(specs, env())
	if err != nil {
		t.Fatal(err)
	}
	var seen http.Header
	c2 := filters.NewChain(c, filters.Named{Name: "spy", Filter: spy(func(r *http.Request) { seen = r.Header })})
	req := httptest.NewRequest("GET", "http://b/", nil)
	for k, v := range in {
		req.Header[k] = v
	}
	req = req.WithContext(filters.NewContext(req.Context(), &filters.Info{}))
	c2.ServeHTTP(httptest.NewRecorder(), req)
	if seen == nil {
		t.Fatal("the chain did not run")
	}
	return seen
}

// spy is a filter that calls see with the request once the rest of the
// chain is done with it.
type spy func(*http.Request)

func (s spy) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(w, r)
	s(r)
}

// TestRequestIDDefault: the outbound side keeps or makes x-request-id
// unless told not to; the inbound side keeps what it gets unless told to
// make one; a requestid filter listed runs where it is, with its header.
func TestRequestIDDefault(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		inbound    bool
		paths      []string // the chain's specs
		header     string   // the header that must carry a UUID, "" none
	}{
		{name: "no file: outbound makes one", yaml: "",
			paths: []string{"outbound.requestid", "outbound.router"}, header: "X-Request-Id"},
		{name: "no file: inbound makes none", yaml: "", inbound: true,
			paths: []string{"inbound.router"}},
		{name: "a chain without requestid: first", yaml: "outbound: {filters: [{tag: {name: a}}]}",
			paths: []string{"outbound.requestid", "outbound.filters[0].tag", "outbound.router"}, header: "X-Request-Id"},
		{name: "turned off", yaml: "outbound: {generateRequestId: false, filters: [{tag: {name: a}}]}",
			paths: []string{"outbound.filters[0].tag", "outbound.router"}},
		{name: "said on", yaml: "outbound: {generateRequestId: true}",
			paths: []string{"outbound.requestid", "outbound.router"}, header: "X-Request-Id"},
		{name: "inbound turned on", yaml: "inbound: {generateRequestId: true}", inbound: true,
			paths: []string{"inbound.requestid", "inbound.router"}, header: "X-Request-Id"},
		{name: "listed: where it is, with its header",
			yaml:  "outbound: {filters: [{tag: {name: a}}, {requestid: {header: x-correlation-id}}]}",
			paths: []string{"outbound.filters[0].tag", "outbound.filters[1].requestid", "outbound.router"}, header: "X-Correlation-Id"},
		{name: "listed and said on", yaml: "outbound: {generateRequestId: true, filters: [{requestid: {}}]}",
			paths: []string{"outbound.filters[0].requestid", "outbound.router"}, header: "X-Request-Id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.yaml), idRegistry())
			if err != nil {
				t.Fatal(err)
			}
			specs := f.Outbound
			if tt.inbound {
				specs = f.Inbound
			}
			var paths []string
			for _, s := range specs {
				paths = append(paths, s.Path)
			}
			if diff := cmp.Diff(tt.paths, paths); diff != "" {
				t.Errorf("specs (-want +got):\n%s", diff)
			}
			seen := seenHeaders(t, specs, nil)
			for _, h := range []string{"X-Request-Id", "X-Correlation-Id"} {
				got := seen.Values(h)
				if h == tt.header {
					if len(got) != 1 || !uuidV4.MatchString(got[0]) {
						t.Errorf("%s = %q, want one UUID v4", h, got)
					}
				} else if len(got) != 0 {
					t.Errorf("%s = %q, want none", h, got)
				}
			}
			// An ID the request carries is kept, whether or not the
			// chain makes them.
			kept := seenHeaders(t, specs, http.Header{"X-Request-Id": {"from-the-app"}})
			if got := kept.Values("X-Request-Id"); !cmp.Equal(got, []string{"from-the-app"}) {
				t.Errorf("X-Request-Id = %q, want the request's own kept", got)
			}
		})
	}
}

func TestRequestIDErrors(t *testing.T) {
	for _, tt := range []struct{ name, yaml, want string }{
		{"contradiction", "outbound: {generateRequestId: false, filters: [{tag: {name: a}}, {requestid: {}}]}",
			`outbound.generateRequestId: false, but outbound.filters[1].requestid makes request IDs: drop one of the two`},
		{"contradiction inbound", "inbound: {generateRequestId: false, filters: [{requestid: {}}]}",
			`inbound.generateRequestId: false, but inbound.filters[0].requestid makes request IDs: drop one of the two`},
		{"not a boolean", "outbound: {generateRequestId: no}", `outbound.generateRequestId: want a boolean, got string`},
		{"misspelt", "outbound: {generateRequestIds: false}", `outbound.generateRequestIds: unknown field (known: generateRequestId, filters)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), idRegistry())
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v\nwant    %s", err, tt.want)
			}
		})
	}
}
