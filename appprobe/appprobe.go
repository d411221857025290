// Package appprobe is the contract between the injector and the sidecar for
// an application's kubelet probes, which the sidecar runs from inside the
// pod so that they keep working when it refuses plaintext inbound traffic
// (mesh.mode STRICT). It holds what both sides agree on and nothing that
// runs a probe (package appprobe/prober does), so that the injector imports
// it without the prober's gRPC and HTTP clients.
//
// The injector rewrites each application container's httpGet, tcpSocket and
// grpc probe into an httpGet on the sidecar's health port,
//
//	httpGet: {path: /app-health/<container>/<readyz|livez|startupz>, port: 15021}
//
// (Path), and hands the sidecar the original probes as a Set, encoded with
// Set.Encode into the environment variable PILLION_APP_PROBES (EnvVar), with
// the pod's IP in POD_IP (PodIPEnvVar). The sidecar decodes the Set with
// Parse and serves it with prober.NewHandler.
//
// The JSON of a Set is the wire format:
//
//	{"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 2},
//	 "/app-health/app/livez":  {"tcpSocket": {"port": 8080}},
//	 "/app-health/db/readyz":  {"grpc": {"port": 9000, "service": "db"}}}
package appprobe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// PathPrefix starts every probe path on the health port.
const PathPrefix = "/app-health/"

// The kinds of probe, the last element of a probe path.
const (
	Readiness = "readyz"
	Liveness  = "livez"
	Startup   = "startupz"
)

// EnvVar is the environment variable the injector writes a Set's Encode
// into, and the default of `pillion proxy --app-probes`.
const EnvVar = "PILLION_APP_PROBES"

// PodIPEnvVar is the environment variable the injector fills with the
// pod's IP (the downward API's status.podIP), and the default of `pillion
// proxy --pod-ip`.
const PodIPEnvVar = "POD_IP"

// Path returns the probe path of a container's probe of the given kind
// (Readiness, Liveness or Startup): "/app-health/<container>/<kind>". It
// does not check its arguments; Parse does.
func Path(container, kind string) string {
	return PathPrefix + container + "/" + kind
}

// Set maps a probe path on the health port ("/app-health/<container>/readyz")
// to the probe it stands for. The nil Set has no probes.
type Set map[string]Probe

// Probe is one of an application container's original probes: exactly one
// of HTTPGet, TCPSocket and GRPC is set.
type Probe struct {
	HTTPGet   *HTTPGet   `json:"httpGet,omitempty"`
	TCPSocket *TCPSocket `json:"tcpSocket,omitempty"`
	GRPC      *GRPC      `json:"grpc,omitempty"`
	// TimeoutSeconds is how long the probe may take; 0 means 1, as kubelet.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// HTTPGet is an HTTP GET probe: it passes when the application answers
// with a status from 200 to 399.
type HTTPGet struct {
	// Path is the request's path (and query); empty means "/".
	Path string `json:"path,omitempty"`
	// Port is a number: the injector resolves named ports.
	Port int32 `json:"port"`
	// Host is the address to connect to; empty means the pod's IP
	// (prober.Options).
	Host string `json:"host,omitempty"`
	// Scheme is HTTP (empty means HTTP) or HTTPS. HTTPS does not verify
	// the application's certificate, as kubelet does not.
	Scheme string `json:"scheme,omitempty"`
	// HTTPHeaders are sent with the request; a Host header sets the
	// request's host.
	HTTPHeaders []Header `json:"httpHeaders,omitempty"`
}

// Header is one HTTP header of an HTTPGet probe.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocket is a TCP probe: it passes when a connection can be opened.
type TCPSocket struct {
	Port int32 `json:"port"`
	// Host is the address to connect to; empty means the pod's IP
	// (prober.Options).
	Host string `json:"host,omitempty"`
}

// GRPC is a gRPC probe: it passes when grpc.health.v1.Health/Check on
// Port of the pod's IP (prober.Options) answers SERVING for Service.
type GRPC struct {
	Port int32 `json:"port"`
	// Service is the name checked; nil means "", the server as a whole.
	Service *string `json:"service,omitempty"`
}

// Parse decodes and validates a Set from its JSON, strictly: an unknown
// field, a repeated path or trailing data is an error. Errors name the
// probe path and the field, as in
// `appprobe: "/app-health/app/readyz": httpGet.port: 0: not a port (1-65535)`.
// An empty (or all-blank) data is the empty Set. A Set Parse returns is
// never nil.
func Parse(data string) (Set, error) {
	s, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("appprobe: %w", err)
	}
	return s, nil
}

func parse(data string) (Set, error) {
	if strings.TrimSpace(data) == "" {
		return Set{}, nil
	}
	// Syntax first, for json's full messages; then the object, key by key,
	// to name the path in each error and refuse a path given twice.
	var whole json.RawMessage
	if err := json.Unmarshal([]byte(data), &whole); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(whole))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok == nil { // null
		return Set{}, nil
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("want a JSON object of probe paths to probes, got %v", tok)
	}
	s := Set{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key := tok.(string) // an object's keys are strings, or Token fails
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%q: %w", key, err)
		}
		if _, dup := s[key]; dup {
			return nil, fmt.Errorf("%q: given twice", key)
		}
		p, err := decodeProbe(raw)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", key, err)
		}
		s[key] = p
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func decodeProbe(raw json.RawMessage) (Probe, error) {
	var p Probe
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Probe{}, err
	}
	if p.HTTPGet != nil && len(p.HTTPGet.HTTPHeaders) == 0 {
		p.HTTPGet.HTTPHeaders = nil // [] and absent are the same
	}
	return p, nil
}

// Validate checks every path and probe of s, in the order of the paths,
// and returns the first error, naming the path and the field.
func (s Set) Validate() error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("appprobe: %w", err)
	}
	return nil
}

func (s Set) validate() error {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := validate(k, s[k]); err != nil {
			return err
		}
	}
	return nil
}

// Encode returns s as JSON, the paths in order: equal Sets give equal
// strings. The nil Set is "{}".
func (s Set) Encode() string {
	if s == nil {
		return "{}"
	}
	b, err := json.Marshal(s)
	if err != nil { // no field of a Set can fail to encode
		panic("appprobe: encode: " + err.Error())
	}
	return string(b)
}

// validate checks one entry of a Set; errors name key and field.
func validate(key string, p Probe) error {
	if err := validatePath(key); err != nil {
		return fmt.Errorf("%q: %w", key, err)
	}
	if err := p.validate(); err != nil {
		return fmt.Errorf("%q: %w", key, err)
	}
	return nil
}

func validatePath(key string) error {
	rest, ok := strings.CutPrefix(key, PathPrefix)
	container, kind, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || (kind != Readiness && kind != Liveness && kind != Startup) {
		return errors.New("not a probe path: want /app-health/<container>/<readyz|livez|startupz>")
	}
	if !isDNSLabel(container) {
		return fmt.Errorf("container %q: not a container name (a DNS-1123 label)", container)
	}
	return nil
}

func (p Probe) validate() error {
	var set []string
	if p.HTTPGet != nil {
		set = append(set, "httpGet")
	}
	if p.TCPSocket != nil {
		set = append(set, "tcpSocket")
	}
	if p.GRPC != nil {
		set = append(set, "grpc")
	}
	if len(set) != 1 {
		got := "none"
		if len(set) > 1 {
			got = strings.Join(set, " and ")
		}
		return fmt.Errorf("exactly one of httpGet, tcpSocket and grpc is needed, got %s", got)
	}
	if p.TimeoutSeconds < 0 {
		return fmt.Errorf("timeoutSeconds: %d: must not be negative", p.TimeoutSeconds)
	}
	switch {
	case p.HTTPGet != nil:
		return p.HTTPGet.validate()
	case p.TCPSocket != nil:
		if err := validatePort(p.TCPSocket.Port); err != nil {
			return fmt.Errorf("tcpSocket.port: %w", err)
		}
		if err := validateHost(p.TCPSocket.Host); err != nil {
			return fmt.Errorf("tcpSocket.host: %w", err)
		}
	default:
		if err := validatePort(p.GRPC.Port); err != nil {
			return fmt.Errorf("grpc.port: %w", err)
		}
	}
	return nil
}

func (g *HTTPGet) validate() error {
	if err := validatePort(g.Port); err != nil {
		return fmt.Errorf("httpGet.port: %w", err)
	}
	if err := validateHost(g.Host); err != nil {
		return fmt.Errorf("httpGet.host: %w", err)
	}
	if g.Scheme != "" && g.Scheme != "HTTP" && g.Scheme != "HTTPS" {
		return fmt.Errorf("httpGet.scheme: %q: want HTTP or HTTPS", g.Scheme)
	}
	for i, h := range g.HTTPHeaders {
		if !httpguts.ValidHeaderFieldName(h.Name) {
			return fmt.Errorf("httpGet.httpHeaders[%d].name: %q: not a header name", i, h.Name)
		}
		if !httpguts.ValidHeaderFieldValue(h.Value) {
			return fmt.Errorf("httpGet.httpHeaders[%d].value: %q: not a header value", i, h.Value)
		}
	}
	return nil
}

func validatePort(p int32) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("%d: not a port (1-65535)", p)
	}
	return nil
}

// validateHost accepts empty (the pod's IP), an IP address without a zone, or
// a DNS name.
func validateHost(h string) error {
	if h == "" {
		return nil
	}
	if a, err := netip.ParseAddr(h); err == nil && a.Zone() == "" {
		return nil
	}
	if len(h) <= 253 && !strings.Contains(h, ":") {
		ok := true
		for l := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
			ok = ok && isHostLabel(l)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("%q: not an IP address or DNS name", h)
}

// isDNSLabel reports whether s is an RFC 1123 label in lower case, as
// Kubernetes wants of container names.
func isDNSLabel(s string) bool {
	return isHostLabel(s) && strings.ToLower(s) == s
}

func isHostLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
