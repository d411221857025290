// Package configfile reads the proxy's YAML config file (`pillion proxy
// --config FILE`): it decodes it strictly (an unknown field is an error
// naming it), validates it into typed values, and builds the inbound and
// outbound filter chains. Errors name the field's path in the file, such as
// `outbound.filters[1].retry.attempts`.
//
//	mesh:
//	  networks: [10.0.0.0/8]          # addresses served by pillion sidecars: mTLS to them
//	  exclude:  [10.0.0.10/32]        # …except these (no sidecar): plaintext as sent
//	  mode: STRICT                    # inbound: refuse plaintext (default PERMISSIVE)
//	inbound:
//	  filters:
//	    - ratelimit: { requestsPerSecond: 200, burst: 400 }
//	outbound:
//	  generateRequestId: true         # keep or make x-request-id (the default outbound)
//	  filters:
//	    - timeout: { request: 15s }
//	    - retry:   { attempts: 2, on: [connect-failure, refused-stream, "503"] }
//	    - router:  { serverTiming: true }   # optional, and only last
//	metrics:
//	  istio: false                    # no istio_* series (default true)
//	tracing:                              # optional: a span per HTTP request
//	  otlp: { endpoint: otel-collector.observability:4317 }
//	  sampling: 1                         # percent (default 1)
package configfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/router"
	"github.com/pillionmesh/pillion/proxy/tracing"
	"github.com/pillionmesh/pillion/proxy/upstream"
	"github.com/pillionmesh/pillion/sidecar"
)

// RouterName is the terminal filter's name; it may only be the last entry
// of a chain, and is added with its defaults when absent.
const RouterName = "router"

// File is a validated config file. Build turns its chains into running
// filters.
type File struct {
	// Mesh says which destinations are served by pillion sidecars.
	Mesh Mesh
	// Inbound and Outbound are the chains' filters in order, the router
	// last.
	Inbound, Outbound []Spec
	// Tracing is the `tracing` section; nil (no section) makes no spans
	// and starts no exporter.
	Tracing *tracing.Config
	// Metrics turns metric families on and off.
	Metrics Metrics
}

// Metrics is the `metrics` section.
type Metrics struct {
	// Istio: the sidecar records Istio's standard metrics (istio_*)
	// beside its own. On by default; off drops the series recorded so far.
	Istio bool
}

// Mesh is the `mesh` section.
type Mesh struct {
	// Networks are the addresses whose traffic is received by a pillion
	// sidecar: outbound traffic to them travels in mTLS between the
	// sidecars, HTTP as pooled HTTP/2. Empty: every destination gets the
	// application's own bytes, in the clear.
	Networks []netip.Prefix
	// Exclude are addresses inside Networks without a sidecar (a DNS
	// server, a node-local agent): traffic to them goes as the
	// application sent it.
	Exclude []netip.Prefix
	// Mode is how the inbound side treats connections that are not mTLS
	// from a peer sidecar.
	Mode Mode
}

// Contains reports whether a is served by a pillion sidecar: in one of the
// mesh networks and not excluded.
func (m Mesh) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return inAny(m.Networks, a) && !inAny(m.Exclude, a)
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Mode is the inbound mTLS mode, as Istio's PeerAuthentication names it.
type Mode uint8

const (
	// Permissive passes connections that are not mTLS from a peer sidecar
	// to the application, and counts them: for meshes being adopted.
	Permissive Mode = iota
	// Strict refuses them: only peer sidecars reach the application.
	Strict
)

func (m Mode) String() string {
	if m == Strict {
		return "STRICT"
	}
	return "PERMISSIVE"
}

// MarshalText shows the mode by name (in the admin config dump).
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Spec is one filter of a chain as the file configures it.
type Spec struct {
	Name   string
	Path   string // where it is in the file, for errors
	Config filters.Config
}

// Parse decodes data (YAML) and validates its structure with reg's filter
// types. A filter's own values are validated when Build builds it.
func Parse(data []byte, reg filters.Registry) (*File, error) {
	js, err := yamlToJSON(data)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := filters.DecodeStrict(js, &top, ""); err != nil {
		return nil, err
	}
	if err := onlyKeys(top, "", "mesh", "inbound", "outbound", "metrics", "tracing"); err != nil {
		return nil, err
	}
	f := &File{}
	if f.Metrics, err = parseMetrics(top["metrics"]); err != nil {
		return nil, err
	}
	if f.Mesh, err = parseMesh(top["mesh"]); err != nil {
		return nil, err
	}
	if f.Inbound, err = parseChain(top["inbound"], "inbound", false, reg); err != nil {
		return nil, err
	}
	if f.Outbound, err = parseChain(top["outbound"], "outbound", true, reg); err != nil {
		return nil, err
	}
	if f.Tracing, err = parseTracing(top["tracing"]); err != nil {
		return nil, err
	}
	return f, nil
}

func parseMetrics(raw json.RawMessage) (Metrics, error) {
	m := struct {
		Istio *bool `json:"istio"`
	}{}
	if err := filters.DecodeStrict(raw, &m, "metrics"); err != nil {
		return Metrics{}, err
	}
	out := Metrics{Istio: true}
	if m.Istio != nil {
		out.Istio = *m.Istio
	}
	return out, nil
}

func parseMesh(raw json.RawMessage) (Mesh, error) {
	var m struct {
		Networks []string `json:"networks"`
		Exclude  []string `json:"exclude"`
		Mode     *string  `json:"mode"`
	}
	if err := filters.DecodeStrict(raw, &m, "mesh"); err != nil {
		return Mesh{}, err
	}
	var out Mesh
	var err error
	if out.Networks, err = parsePrefixes(m.Networks, "mesh.networks"); err != nil {
		return Mesh{}, err
	}
	if out.Exclude, err = parsePrefixes(m.Exclude, "mesh.exclude"); err != nil {
		return Mesh{}, err
	}
	if m.Mode != nil {
		switch strings.ToUpper(*m.Mode) {
		case "STRICT":
			out.Mode = Strict
		case "PERMISSIVE":
			out.Mode = Permissive
		default:
			return Mesh{}, filters.Invalid("mesh.mode", "want STRICT or PERMISSIVE, got %q", *m.Mode)
		}
	}
	return out, nil
}

// parseTracing decodes the `tracing` section; absent or null is nil.
func parseTracing(raw json.RawMessage) (*tracing.Config, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var r tracing.Raw
	if err := filters.DecodeStrict(raw, &r, "tracing"); err != nil {
		return nil, err
	}
	c, err := r.Validate()
	if err != nil {
		return nil, filters.Within("tracing", err)
	}
	return c, nil
}

// parsePrefixes parses CIDRs as the capture rules' exclusions are parsed
// (sidecar.ParsePrefix): a bare address is its own /32 or /128, and an
// IPv4-mapped range is the IPv4 range it stands for — Contains sees
// destinations unmapped, so a mapped range kept as IPv6 would never match.
func parsePrefixes(ss []string, field string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range ss {
		p, err := sidecar.ParsePrefix(s)
		if err != nil {
			return nil, filters.Invalid(fmt.Sprintf("%s[%d]", field, i), "%q is not a CIDR such as 10.0.0.0/8", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// parseChain parses the chain of direction dir; generateID is whether it
// keeps or makes request IDs when the file does not say (requestid.go).
func parseChain(raw json.RawMessage, dir string, generateID bool, reg filters.Registry) ([]Spec, error) {
	var c struct {
		GenerateRequestID *bool                        `json:"generateRequestId"`
		Filters           []map[string]json.RawMessage `json:"filters"`
	}
	if err := filters.DecodeStrict(raw, &c, dir); err != nil {
		return nil, err
	}
	specs := make([]Spec, 0, len(c.Filters)+1)
	for i, entry := range c.Filters {
		at := fmt.Sprintf("%s.filters[%d]", dir, i)
		if len(entry) != 1 {
			return nil, filters.Invalid(at, "want one filter name as the only key, such as {ratelimit: {...}}, got %d keys", len(entry))
		}
		for name, body := range entry {
			newConfig, ok := reg[name]
			if !ok {
				return nil, filters.Invalid(at, "unknown filter %q (known: %s)", name, strings.Join(names(reg), ", "))
			}
			path := at + "." + name
			if name == RouterName && i != len(c.Filters)-1 {
				return nil, filters.Invalid(path, "the router forwards the request: it must be the last filter")
			}
			cfg := newConfig()
			if err := filters.DecodeStrict(body, cfg, path); err != nil {
				return nil, err
			}
			specs = append(specs, Spec{Name: name, Path: path, Config: cfg})
		}
	}
	if len(specs) == 0 || specs[len(specs)-1].Name != RouterName {
		specs = append(specs, Spec{Name: RouterName, Path: dir + ".router", Config: &router.Config{}})
	}
	if c.GenerateRequestID != nil {
		generateID = *c.GenerateRequestID
	}
	return withRequestID(specs, dir, generateID, c.GenerateRequestID != nil)
}

// Build builds the chain of specs for env: every filter, the router last.
func Build(specs []Spec, env filters.Env) (*filters.Chain, error) {
	named := make([]filters.Named, 0, len(specs))
	for _, s := range specs {
		f, err := s.Config.Build(env)
		if err != nil {
			return nil, filters.Within(s.Path, err)
		}
		named = append(named, filters.Named{Name: s.Name, Filter: f})
	}
	last := named[len(named)-1].Filter
	terminal := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { last.ServeHTTP(w, r, nil) })
	return filters.NewChain(terminal, named[:len(named)-1]...), nil
}

// yamlToJSON converts a YAML document to JSON so that encoding/json can
// decode it strictly. YAML 1.2 (yaml/v3): `on:` is the key "on", not the
// boolean true of YAML 1.1, and a key given twice is an error.
func yamlToJSON(data []byte) ([]byte, error) {
	d := yaml.NewDecoder(bytes.NewReader(data))
	var v any
	if err := d.Decode(&v); err != nil && err != io.EOF {
		return nil, err // "yaml: line 3: ..."
	}
	var more any
	if err := d.Decode(&more); err != io.EOF {
		return nil, errors.New("yaml: one document only: the file has a second one (after ---)")
	}
	js, err := json.Marshal(v)
	var uv *json.UnsupportedValueError
	switch {
	case errors.As(err, &uv):
		return nil, fmt.Errorf("%s is not a number a config can hold", uv.Str)
	case err != nil:
		// A mapping with keys that are not strings ({1: x}).
		return nil, errors.New("every mapping key must be a string")
	}
	return js, nil
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// onlyKeys refuses keys of m that are not in known.
func onlyKeys(m map[string]json.RawMessage, path string, known ...string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(known, k) {
			return filters.Invalid(join(path, k), "unknown field (known: %s)", strings.Join(known, ", "))
		}
	}
	return nil
}

func names(reg filters.Registry) []string {
	return slices.Sorted(maps.Keys(reg))
}

// Check parses data and builds both of its chains without running them, so
// that a config can be refused where it is written (the injector, a CI
// step) rather than only where it runs. The error is Parse's or Build's.
func Check(data []byte, reg filters.Registry) error {
	f, err := Parse(data, reg)
	if err != nil {
		return err
	}
	for _, dir := range []struct {
		d     filters.Direction
		specs []Spec
	}{{filters.Inbound, f.Inbound}, {filters.Outbound, f.Outbound}} {
		env := filters.Env{
			Direction:     dir.d,
			Log:           zap.NewNop(),
			AccessLog:     zap.NewNop(),
			AccessLogText: io.Discard,
			Now:           time.Now,
			Route:         func(dst netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: dst} },
			Upstream:      noUpstream{},
		}
		if _, err := Build(dir.specs, env); err != nil {
			return err
		}
	}
	return nil
}

// noUpstream stands in for the pools in Check: the chains are built, never
// run.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request, upstream.Endpoint, upstream.Protocol) (*http.Response, error) {
	return nil, errors.New("configfile: Check builds chains that never forward")
}
