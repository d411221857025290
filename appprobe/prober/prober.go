// Package prober runs an application's kubelet probes from inside the pod,
// as the sidecar's health port serves them: the injector hands the sidecar
// the original probes (an appprobe.Set, the contract between the two), and
// each GET on a probe path runs the original probe against the
// application and answers as kubelet would judge it, so kubelet sees the
// application's health as if it had probed it itself. A probe that names no
// host goes, as kubelet's, to the pod's IP (Options.PodIP), from 127.0.0.6
// or ::6 (Options.Source), which capture lets through; without a pod IP, to
// 127.0.0.1.
package prober

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/mtls"
)

// defaultHost is where probes that name no host go without a pod IP.
const defaultHost = "127.0.0.1"

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
// not checked with appprobe.Set.Validate), or every probe when o is invalid (not
// checked with Options.Validate), 500 with the error.
func NewHandler(s appprobe.Set, o Options) *Handler {
	d := dialer{podIP: o.PodIP, source: o.Source}
	h := &Handler{probes: make(map[string]compiled, len(s)), client: newClient(d), dial: d}
	oerr := o.validate()
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
func compile(key string, p appprobe.Probe, host string) compiled {
	if err := (appprobe.Set{key: p}).Validate(); err != nil {
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
		http.Error(w, fmt.Sprintf("prober: no probe at %s", r.URL.Path), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, fmt.Sprintf("prober: %s is probed with GET", r.URL.Path), http.StatusMethodNotAllowed)
		return
	}
	if c.err != nil {
		http.Error(w, "prober: invalid probe: "+c.err.Error(), http.StatusInternalServerError)
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
