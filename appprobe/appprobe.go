// Package appprobe runs an application's kubelet probes from inside the pod,
// so that they keep working when the sidecar refuses plaintext inbound
// traffic (mesh.mode STRICT).
//
// The injector rewrites each application container's httpGet, tcpSocket and
// grpc probe into an httpGet on the sidecar's health port,
//
//	httpGet: {path: /app-health/<container>/<readyz|livez|startupz>, port: 15021}
//
// and hands the sidecar the original probes as a Set, encoded with
// Set.Encode into the environment variable PILLION_APP_PROBES. The sidecar
// decodes it with Parse and serves it with NewHandler: each GET on a probe
// path runs the original probe against the application and answers as
// kubelet would judge it, so kubelet sees the application's health as if it
// had probed it itself. A probe that names no host goes, as kubelet's, to
// the pod's IP (Options.PodIP), from 127.0.0.6 or ::6 (Options.Source),
// which capture lets through; without a pod IP, to 127.0.0.1.
//
// The JSON of a Set is the contract between the injector and the sidecar:
//
//	{"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 2},
//	 "/app-health/app/livez":  {"tcpSocket": {"port": 8080}},
//	 "/app-health/db/readyz":  {"grpc": {"port": 9000, "service": "db"}}}
package appprobe

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/mtls"
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
	// (Options).
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
	// (Options).
	Host string `json:"host,omitempty"`
}

// GRPC is a gRPC probe: it passes when grpc.health.v1.Health/Check on
// Port of the pod's IP (Options) answers SERVING for Service.
type GRPC struct {
	Port int32 `json:"port"`
	// Service is the name checked; nil means "", the server as a whole.
	Service *string `json:"service,omitempty"`
}

// defaultHost is where probes that name no host go without a pod IP.
const defaultHost = "127.0.0.1"

// Parse decodes and validates a Set from its JSON, strictly: an unknown
// field, a repeated path or trailing data is an error. Errors name the
// probe path and the field, as in
// `"/app-health/app/readyz": httpGet.port: 0: not a port (1-65535)`.
// An empty (or all-blank) data is the empty Set. A Set Parse returns is
// never nil.
func Parse(data string) (Set, error) {
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
	if err := s.Validate(); err != nil {
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

// Handler answers GET on the probe paths of a Set by running their probes.
// It is safe for concurrent use; it keeps no connection between probes.
type Handler struct {
	probes map[string]compiled
	client *http.Client
	dial   dialer
}

// compiled is one probe ready to run: exactly one of http, tcp and grpc is
// set, or err says why the probe is invalid.
type compiled struct {
	timeout time.Duration
	err     error
	http    *httpProbe
	tcp     string // host:port
	grpc    *grpcProbe
}

type httpProbe struct {
	url    string
	header http.Header
}

type grpcProbe struct {
	target, service string
}

// NewHandler returns a Handler for the probes of s, which sends those that
// name no host where o says; it keeps no reference to s. A GET (or HEAD)
// on a path of s runs its probe with its time-out and answers as kubelet
// would judge the probe:
//
//   - httpGet: the application's status when it is 200–399 (a redirect is
//     not followed, and its Location is not passed on); its status when
//     400 or more; 503 when the request failed (refused, timed out).
//   - tcpSocket: 200 when a connection opens, else 503.
//   - grpc: 200 when the health check answers SERVING, else 503.
//
// The body is one line of text saying what was done and why it failed. A
// path not in s is 404, another method 405, and an invalid probe (s was
// not checked with Validate), or every probe when o is invalid (not
// checked with Options.Validate), 500 with the error.
func NewHandler(s Set, o Options) *Handler {
	d := dialer{podIP: o.PodIP, source: o.Source}
	h := &Handler{probes: make(map[string]compiled, len(s)), client: newClient(d), dial: d}
	oerr := o.Validate()
	for k, p := range s {
		h.probes[k] = compile(k, p, o.host())
		if oerr != nil {
			h.probes[k] = compiled{err: fmt.Errorf("options: %w", oerr)}
		}
	}
	return h
}

// newClient is the HTTP client of httpGet probes, configured as kubelet's:
// no proxy, no keep-alive, no compression, no redirect followed, and no
// verification of the application's certificate.
func newClient(d dialer) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:              nil,
			DialContext:        d.DialContext,
			DisableKeepAlives:  true,
			DisableCompression: true,
			TLSClientConfig:    mtls.ProbeClientConfig(),
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// compile prepares a probe; a probe without a host goes to host.
func compile(key string, p Probe, host string) compiled {
	if err := validate(key, p); err != nil {
		return compiled{err: err}
	}
	c := compiled{timeout: time.Second}
	if p.TimeoutSeconds > 0 {
		c.timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		scheme := "http"
		if g.Scheme == "HTTPS" {
			scheme = "https"
		}
		path := g.Path
		if path == "" {
			path = "/"
		}
		// As kubelet's formatURL: a path that does not parse is passed as is.
		u, err := url.Parse(path)
		if err != nil {
			u = &url.URL{Path: path}
		}
		u.Scheme, u.Host = scheme, hostPort(cmp.Or(g.Host, host), g.Port)
		hp := &httpProbe{url: u.String(), header: http.Header{}}
		for _, hd := range g.HTTPHeaders {
			hp.header.Add(hd.Name, hd.Value)
		}
		c.http = hp
	case p.TCPSocket != nil:
		c.tcp = hostPort(cmp.Or(p.TCPSocket.Host, host), p.TCPSocket.Port)
	default:
		c.grpc = &grpcProbe{target: hostPort(host, p.GRPC.Port)}
		if p.GRPC.Service != nil {
			c.grpc.service = *p.GRPC.Service
		}
	}
	return c
}

func hostPort(host string, port int32) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// result is a probe's verdict: the status to answer and a line saying why.
type result struct {
	code int
	msg  string
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, ok := h.probes[r.URL.Path]
	if !ok {
		http.Error(w, fmt.Sprintf("appprobe: no probe at %s", r.URL.Path), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, fmt.Sprintf("appprobe: %s is probed with GET", r.URL.Path), http.StatusMethodNotAllowed)
		return
	}
	if c.err != nil {
		http.Error(w, "appprobe: invalid probe: "+c.err.Error(), http.StatusInternalServerError)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), c.timeout)
	defer cancel()
	var res result
	switch {
	case c.http != nil:
		res = h.httpGet(ctx, c, r.UserAgent())
	case c.grpc != nil:
		res = h.grpcCheck(ctx, c, r.UserAgent())
	default:
		res = h.tcpDial(ctx, c)
	}
	if res.code < 200 || res.code >= 400 {
		http.Error(w, res.msg, res.code)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(res.code)
	fmt.Fprintln(w, res.msg)
}

// failed is the 503 of a probe that got no answer.
func failed(ctx context.Context, c compiled, what string, err error) result {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: no answer within %s", what, c.timeout)}
	}
	return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", what, err)}
}

// httpGet runs an httpGet probe. userAgent is the prober's (kubelet's
// kube-probe/<version>), sent unless the probe sets its own.
func (h *Handler) httpGet(ctx context.Context, c compiled, userAgent string) result {
	what := "GET " + c.http.url
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.http.url, nil)
	if err != nil {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", what, err)}
	}
	req.Header = c.http.header.Clone()
	if _, ok := req.Header["User-Agent"]; !ok && userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	if _, ok := req.Header["Accept"]; !ok {
		req.Header.Set("Accept", "*/*")
	} else if req.Header.Get("Accept") == "" {
		req.Header.Del("Accept")
	}
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := h.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // what already names the URL
		}
		return failed(ctx, c, what, err)
	}
	defer resp.Body.Close()
	msg := what + ": " + resp.Status
	switch {
	case resp.StatusCode < 200:
		return result{http.StatusServiceUnavailable, msg + ": not a final answer"}
	case resp.StatusCode < 400:
		return result{resp.StatusCode, msg}
	}
	if why := snippet(resp.Body); why != "" {
		msg += ": " + why
	}
	return result{resp.StatusCode, msg}
}

// snippet is the start of a failing answer's body on one line, to say
// why in kubelet's event.
func snippet(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, 256))
	return strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "?")), " ")
}
