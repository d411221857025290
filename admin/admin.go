// Package admin is the sidecar's admin endpoint: the read-only views an operator needs (readiness,
// metrics, pools, listeners, config, certificates) and the few controls they use (log level, drain,
// quit, health-check failure), with the paths and output shapes of Envoy's admin interface, because
// those are what operators' hands already type.
//
// New builds the handler from Sources; Listen binds it to 127.0.0.1 only. The package holds no
// global state: every handler has its own mux, with pprof's handlers mounted on it. (Importing
// net/http/pprof also registers them on http.DefaultServeMux, so that mux must never be served.)
package admin

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Sources is what the admin endpoint reads from and acts on. Every field is optional: a nil func
// (or nil Gatherer, or zero Level) makes its paths answer 503 Service Unavailable with a body
// saying "admin: /path is not available". The funcs are called from the admin server's goroutines,
// possibly concurrently, so they must be safe for concurrent use; they must not block for long.
type Sources struct {
	// Ready reports the server state word — LIVE, PRE_INITIALIZING, INITIALIZING or DRAINING, as
	// Envoy names them — and, when the server is not ready, why. A nil error means ready.
	Ready func() (state string, err error)

	// Gatherer is the proxy's own metrics registry, shown by /stats and /stats/prometheus.
	Gatherer prometheus.Gatherer

	// Clusters lists the upstream pools and their endpoints, for /clusters.
	Clusters func() []Cluster

	// Listeners lists the bound listeners, for /listeners.
	Listeners func() []Listener

	// ConfigDump returns the effective config, for /config_dump, which marshals it with
	// encoding/json as is. The caller redacts secrets (keys, tokens) before returning it.
	ConfigDump func() any

	// Certs returns the identity in use, for /certs; the zero Certs means no identity yet.
	Certs func() Certs

	// ServerInfo returns the version, start time and flags, for /server_info.
	ServerInfo func() ServerInfo

	// Level is the running logger's level, read and changed by POST /logging.
	Level zap.AtomicLevel

	// Drain starts draining as SIGTERM does (not ready at once; listeners accept for the drain
	// period, then close; in-flight requests finish); Quit drains without the drain period and
	// then exits the process. Both are called from an admin request, whose "OK" is
	// written only after they return: they must start the work and return, never wait for the admin
	// server to shut down.
	Drain, Quit func()

	// HealthFail sets (true) or clears (false) the "health check failed" flag, as Envoy's
	// /healthcheck/fail and /healthcheck/ok do; a failed server normally reports DRAINING via Ready.
	HealthFail func(fail bool)

	// Now is the clock for uptime and certificate expiry; nil means time.Now.
	Now func() time.Time
}

// route is one admin path: what it answers, whether it changes anything (POST only), and its help.
type route struct {
	path    string
	post    bool
	help    string
	handler http.HandlerFunc
}

// server holds one admin handler's sources and routes; it is immutable after New.
type server struct {
	src    Sources
	log    *zap.Logger
	routes []route
	prom   http.Handler // /stats/prometheus without a filter
}

// New returns the admin endpoint's handler, reading from and acting on src. log receives one line
// per control action (log level change, drain, quit, health-check flag) and metric-gathering
// errors; nil means no logging. The handler is safe for concurrent use.
//
// Read-only paths answer GET and HEAD; paths that change the server answer POST only, and any other
// method gets 405 Method Not Allowed with an Allow header. An unknown path gets 404 and the list of
// valid ones. POST requests that a browser marks as cross-origin are refused with 403
// (http.CrossOriginProtection), so a web page cannot drive the controls.
func New(src Sources, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	if src.Now == nil {
		src.Now = time.Now
	}
	s := &server{src: src, log: log}
	if src.Gatherer != nil {
		s.prom = s.promHandler(src.Gatherer)
	}
	s.routes = []route{
		{path: "/", help: "print this list of admin paths", handler: s.help},
		{path: "/help", help: "print this list of admin paths", handler: s.help},
		{path: "/ready", help: "print the server state; 200 when LIVE, else 503 and why", handler: s.ready},
		{path: "/stats", help: "print metrics as name: value; ?format=json|prometheus, ?filter=<regex>", handler: s.stats},
		{path: "/stats/prometheus", help: "print metrics in the Prometheus text format; ?filter=<regex>", handler: s.statsPrometheus},
		{path: "/clusters", help: "print upstream pools, their endpoints and counters; ?format=json", handler: s.clusters},
		{path: "/listeners", help: "print the listeners and their addresses; ?format=json", handler: s.listeners},
		{path: "/config_dump", help: "print the effective config as JSON, secrets redacted", handler: s.configDump},
		{path: "/certs", help: "print the workload SVID and trust bundle with expiry as JSON", handler: s.certs},
		{path: "/server_info", help: "print version, state, uptime and command-line options as JSON", handler: s.serverInfo},
		{path: "/logging", post: true, help: "print the log level, or change it with ?level=debug|info|warn|error", handler: s.logging},
		{path: "/drain", post: true, help: "fail readiness, accept for the drain period, then stop accepting and let in-flight requests finish", handler: s.drain},
		{path: "/quitquitquit", post: true, help: "drain without the drain period, then exit the process", handler: s.quit},
		{path: "/healthcheck/fail", post: true, help: "mark the server as failing health checks (DRAINING)", handler: s.healthFail},
		{path: "/healthcheck/ok", post: true, help: "clear the failed health-check mark", handler: s.healthOK},
		{path: "/debug/pprof/", help: "Go runtime profiles (net/http/pprof)", handler: pprof.Index},
	}

	mux := http.NewServeMux()
	for _, r := range s.routes {
		switch r.path {
		case "/":
			mux.Handle("/{$}", s.method(r))
		case "/debug/pprof/":
			// pprof's own handlers, on this mux only; they choose their methods themselves.
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		default:
			mux.Handle(r.path, s.method(r))
		}
	}
	mux.HandleFunc("/", s.notFound)
	return http.NewCrossOriginProtection().Handler(headers(mux))
}

// Listen listens for the admin endpoint on 127.0.0.1:port, never on another address: the endpoint
// can drain and stop the proxy, so only the pod itself may reach it. Port 0 picks a free port.
func Listen(port uint16) (net.Listener, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	return ln, nil
}

// headers sets what every admin answer carries: never cached, never sniffed.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache, max-age=0")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

// method refuses the methods a route does not take: POST-only routes change the server, so a GET
// (a link, a prefetch, a curl without -X POST) must not; read-only routes take GET and HEAD.
func (s *server) method(r route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case r.post && req.Method != http.MethodPost:
			w.Header().Set("Allow", http.MethodPost)
			text(w, http.StatusMethodNotAllowed, "admin: %s changes the server; use POST\n", r.path)
		case !r.post && req.Method != http.MethodGet && req.Method != http.MethodHead:
			w.Header().Set("Allow", "GET, HEAD")
			text(w, http.StatusMethodNotAllowed, "admin: %s is read-only; use GET\n", r.path)
		default:
			r.handler(w, req)
		}
	})
}

// helpText is Envoy's /help shape: a header line, then "  /path: description" sorted by path,
// with "(POST)" after the paths that only take POST.
func (s *server) helpText() string {
	rs := slices.SortedFunc(slices.Values(s.routes), func(a, b route) int { return strings.Compare(a.path, b.path) })
	var b strings.Builder
	b.WriteString("admin commands are:\n")
	for _, r := range rs {
		post := ""
		if r.post {
			post = " (POST)"
		}
		fmt.Fprintf(&b, "  %s%s: %s\n", r.path, post, r.help)
	}
	return b.String()
}

func (s *server) help(w http.ResponseWriter, _ *http.Request) {
	text(w, http.StatusOK, "%s", s.helpText())
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	text(w, http.StatusNotFound, "admin: no such path %q\n%s", r.URL.Path, s.helpText())
}

// unavailable answers a path whose source was not given to New.
func unavailable(w http.ResponseWriter, r *http.Request) {
	text(w, http.StatusServiceUnavailable, "admin: %s is not available\n", r.URL.Path)
}

// text writes a plain-text answer.
func text(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, format, args...)
}
