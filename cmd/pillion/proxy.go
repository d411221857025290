package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/proxy"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/redirect"
	"github.com/pillionmesh/pillion/sidecar"
)

const proxySummary = `Run the sidecar proxy. It listens on the outbound capture port (traffic the
application sends out, redirected by 'pillion init') and on the inbound capture
port (traffic for the application), on IPv4 and, where the namespace has it,
IPv6. Each connection's real destination is read with SO_ORIGINAL_DST:
outbound connections go there; inbound ones go there too, to the application
at the pod's own IP and the port the peer asked, from 127.0.0.6 (::6, which
'pillion init' adds to lo), so that a listener bound to localhost only stays
private to the pod. Run it as UID/GID 1337 (--proxy-uid/--proxy-gid), which
capture exempts: under any other its own connections would be captured again,
and it refuses to start.

Each connection's protocol is detected from its first bytes (TLS ClientHello,
HTTP/2 preface, HTTP/1.x request line, else opaque TCP) without consuming them.
A client that sends nothing within --sniff-timeout (a server-first protocol
such as SMTP or MySQL) is forwarded as opaque TCP; ports in --opaque-ports
skip detection and never wait. TLS and opaque TCP are relayed byte for byte.

Bounded under abuse, each counted in a metric and logged at most once a second
with how many lines were held back: an HTTP client slower than --header-timeout
with a request's headers is closed; connections beyond --max-connections are
reset at once, never queued; mTLS handshakes beyond --max-handshakes wait in
order; a client that stops reading stops the sidecar reading for it (bounded
copy buffers and HTTP/2 flow-control windows, never a growing buffer).

HTTP/1.x and h2c requests run through a filter chain (--config) that ends in
the router: it forwards each request over pooled connections, sets
x-envoy-upstream-service-time on the response, and answers failures itself
with 502/503/504 and a pillion-response-flags header saying why.

Between sidecars, traffic is mTLS (TLS 1.3, SPIFFE X.509-SVIDs on both sides).
The identity comes from the SPIFFE Workload API (--spiffe-socket, default
$SPIFFE_ENDPOINT_SOCKET: a SPIRE agent or 'pillion identity') or from PEM
files (--svid-cert, --svid-key, --svid-bundle), and rotates without dropping
a connection. Outbound traffic to the config's mesh networks (minus
mesh.exclude) goes in mTLS, HTTP as pooled HTTP/2; without an SVID it fails,
never in plaintext. Inbound, mTLS from a peer sidecar is terminated and the
caller's SPIFFE ID reaches the filters (authz) and the access log; anything
else is refused under mesh.mode STRICT, or passed and counted under
PERMISSIVE (the default). Until its identity has an SVID the sidecar is not
ready and logs why.

Tracing (the config's tracing section; off without it): one span per HTTP
request, a client span outbound and a server span inbound, parented on the
caller's W3C traceparent or B3 (single or multi header) and forwarded in the
same formats; sampled as the caller said, else at tracing.sampling percent
(default 1), always with x-client-trace-id; exported over OTLP gRPC to
tracing.otlp.endpoint in bounded batches that drop, and count in
pillion_tracing_spans_dropped_total, rather than make a request wait.

The config file, and SVID files given with --svid-cert, are re-read every
second (a change is taken once two reads agree) and on SIGHUP; a new config
is built whole and swapped in (requests in flight finish on the old chain),
and one that fails to load is refused with a log line while the old keeps
serving.

Operating it: the admin endpoint on 127.0.0.1:--admin-port (15000, loopback
only: /ready, /stats, /stats/prometheus, /clusters, /listeners, /config_dump,
/certs, /server_info, /help; POST /logging?level=, /drain, /quitquitquit,
/healthcheck/fail and /healthcheck/ok), kubelet's /healthz/ready on
:--health-port (15021), with the application's rewritten probes under
/app-health/ (--app-probes, run at --pod-ip as kubelet would, or at 127.0.0.1
without it), and /stats/prometheus on :--prometheus-port (15090).
Logs are JSON lines on stderr (--log-format=console for humans). At info
(--log-level): the sidecar's events (ready, config applied or refused,
connections refused or denied, failed handshakes) and, with the accesslog
filter, one line per HTTP request (JSON, or Envoy's default text format with
format: envoy); one line per connection only at debug. The outbound chain
keeps or makes x-request-id (a UUID v4) unless its generateRequestId is false.
SIGINT or SIGTERM: readiness fails at once; for --drain-period (5s, Istio's
terminationDrainDuration) both listeners keep accepting, because kube-proxy
and other sidecars send new connections until the pod's removal reaches them:
inbound HTTP answers say Connection: close (HTTP/2: GOAWAY) so clients move
on, the outbound side serves the application as usual, opaque TCP carries on.
Then the listeners close, requests in flight finish, other connections get up
to --drain-timeout and are reset; then exit 0. POST /drain does the same but
stays up (DRAINED); POST /quitquitquit skips (or cuts short) the drain period
and exits: it is for an application that is done, as a Job's is. Keep
--drain-period plus --drain-timeout within the pod's
terminationGracePeriodSeconds.

Example:
  setpriv --reuid=1337 --regid=1337 --clear-groups pillion proxy --config=/etc/pillion/proxy.yaml \
    --spiffe-socket=/run/spire/agent.sock

A config file (see the README for every filter):
  mesh: {networks: [10.0.0.0/8], mode: STRICT}
  inbound:
    filters:
      - authz: {allow: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
  outbound:
    filters:
      - accesslog: {}
      - retry: {attempts: 2, on: [connect-failure, "503"]}
  tracing: {otlp: {endpoint: "otel-collector.observability:4317"}, sampling: 1}`

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("proxy", proxySummary, stdout)
	cfg := proxy.DefaultConfig()
	outbound := fs.Uint("outbound-port", uint(cfg.OutboundPort), "port outbound traffic is redirected to")
	inbound := fs.Uint("inbound-port", uint(cfg.InboundPort), "port inbound traffic is redirected to")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", cfg.DialTimeout, "how long connecting upstream may take")
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "connections proxied at once, both directions; more are reset")
	fs.IntVar(&cfg.MaxHandshakes, "max-handshakes", cfg.MaxHandshakes, "mTLS handshakes in flight at once, both directions; more wait in order")
	fs.DurationVar(&cfg.DrainPeriod, "drain-period", cfg.DrainPeriod,
		"on SIGTERM or POST /drain, how long both listeners keep accepting, readiness failing, while the pod's removal reaches its peers (inbound HTTP is told to close); 0: close them at once")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "once the listeners closed, how long open connections may take to finish before they are reset")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "reset a connection when no byte moved either way for this long (0: no limit)")
	fs.DurationVar(&cfg.SniffTimeout, "sniff-timeout", cfg.SniffTimeout,
		"how long a client may take to show its protocol; then the connection is forwarded as opaque TCP")
	fs.DurationVar(&cfg.HeaderTimeout, "header-timeout", cfg.HeaderTimeout,
		"how long an HTTP/1 client may take to send a request's headers once it started them, both directions; "+
			"then the connection is closed, counted and logged. 10s is Linkerd's bound on a client's first bytes; Envoy has none by default (request_headers_timeout off). "+
			"At most "+proxy.MaxHeaderTimeout.String())
	opaque := fs.String("opaque-ports", cfg.OpaquePorts.String(),
		`original destination ports forwarded as opaque TCP without protocol detection: comma list, "" none, "*" all`)
	configPath := fs.String("config", "", "YAML config file: mesh networks, the inbound and outbound HTTP filter chains and tracing; re-read when it changes or on SIGHUP")
	fs.IntVar(&cfg.Pool.MaxConnsPerEndpoint, "max-conns-per-endpoint", cfg.Pool.MaxConnsPerEndpoint,
		"HTTP/1.1 connections per upstream endpoint; more requests wait for one (0: no limit)")
	fs.DurationVar(&cfg.Pool.HTTP1IdleTimeout, "http1-idle-timeout", cfg.Pool.HTTP1IdleTimeout,
		"close pooled HTTP/1.1 upstream connections idle this long; keep it below the application's keep-alive time-out")
	fs.DurationVar(&cfg.Pool.HTTP2IdleTimeout, "http2-idle-timeout", cfg.Pool.HTTP2IdleTimeout,
		"close pooled HTTP/2 upstream connections idle this long")
	proxyUID := fs.String("proxy-uid", strconv.FormatUint(uint64(sidecar.DefaultProxyUID), 10),
		"the user ID capture exempts (pillion init's --proxy-uid): the proxy refuses to start under another, whose connections would be captured again")
	proxyGID := fs.String("proxy-gid", strconv.FormatUint(uint64(sidecar.DefaultProxyGID), 10),
		"the group ID capture exempts (pillion init's --proxy-gid): the proxy refuses to start under another")
	svid := addSVIDFlags(fs)
	disc := addDiscoveryFlags(fs)
	ports := addOpsFlags(fs)
	addWorkloadFlags(fs, &cfg.Workload)
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	fs.TextVar(&level, "log-level", level, "log level: debug, info, warn or error; changed at run time with POST /logging?level= on the admin endpoint")
	logFormat := fs.String("log-format", "json", "log format: json, or console for humans")
	appProbes := fs.String("app-probes", os.Getenv(appprobe.EnvVar),
		"the application's original httpGet/tcpSocket/grpc probes as JSON, which the injector writes into $"+appprobe.EnvVar+
			" when it rewrites them to the health port: :--health-port then answers GET /app-health/<container>/<readyz|livez|startupz>"+
			" by running that probe against the application (at --pod-ip, from 127.0.0.6 or ::6, unless the probe names a host; without --pod-ip"+
			" at 127.0.0.1) and answering as kubelet would judge it, whether or not the sidecar is ready, since they report the application's health")
	podIPFlag := fs.String("pod-ip", os.Getenv(appprobe.PodIPEnvVar), podIPUsage)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.OutboundPort, err = portFlag("outbound-port", *outbound); err != nil {
		return err
	}
	if cfg.InboundPort, err = portFlag("inbound-port", *inbound); err != nil {
		return err
	}
	uid, err := redirect.ParseID("--proxy-uid", "user", *proxyUID)
	if err != nil {
		return badUsage(err)
	}
	gid, err := redirect.ParseID("--proxy-gid", "group", *proxyGID)
	if err != nil {
		return badUsage(err)
	}
	if cfg.OpaquePorts, err = sidecar.ParsePortSet(*opaque); err != nil {
		return badUsage(fmt.Errorf("--opaque-ports: %q: %w", *opaque, err))
	}
	if err := cfg.Validate(); err != nil {
		return badUsage(proxyUserError(err))
	}
	if err := disc.validate(); err != nil {
		return err
	}
	probes, err := appprobe.Parse(*appProbes)
	if err != nil {
		return badUsage(fmt.Errorf("--app-probes: %w", err))
	}
	podIP, err := parsePodIP(*podIPFlag)
	if err != nil {
		return err
	}
	var (
		file     *configfile.File
		fileData []byte
	)
	if *configPath != "" {
		if fileData, file, err = loadConfig(*configPath); err != nil {
			return badUsage(fmt.Errorf("--config: %w", err))
		}
	}
	if *logFormat != "json" && *logFormat != "console" {
		return badUsage(fmt.Errorf("--log-format: %q: want json or console", *logFormat))
	}
	// One lock for the log and the access log's text lines (the
	// accesslog filter's format: envoy), so that lines never interleave.
	out := zapcore.Lock(zapcore.AddSync(stderr))
	log := newLogger(level, out, *logFormat)
	defer func() { _ = log.Sync() }()
	cfg.AccessLogText = out
	id, closeID, err := svid.source(log)
	if err != nil {
		return err
	}
	defer closeID()
	cfg.Identity = id
	resolver, discConn, err := disc.client(id, log)
	if err != nil {
		return err
	}
	if resolver != nil {
		defer discConn.Close()
		cfg.Discovery = resolver
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if resolver != nil {
		reg.MustRegister(resolver.Collectors()...)
	}
	cfg.Registerer = reg
	s, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	if file != nil {
		if err := s.Apply(file); err != nil {
			return badUsage(fmt.Errorf("--config: %s: %w", *configPath, proxyUserError(err)))
		}
	}
	// Last of the checks, so that every mistake in flags and config is
	// told first, and first of what runs.
	if err := exempt(uid, gid, os.Geteuid(), os.Getegid()); err != nil {
		return badUsage(err)
	}
	// SIGHUP re-reads the config file and the SVID files at once.
	var force []func()
	if file != nil {
		w := newConfigWatcher(*configPath, fileData, s, log)
		go w.Run(ctx)
		force = append(force, w.Force)
	}
	if r, ok := id.(interface{ Reload() }); ok {
		force = append(force, r.Reload)
	}
	if len(force) > 0 {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go forceOn(ctx, hup, force...)
	}
	ctx, quit := context.WithCancel(ctx)
	defer quit()
	if resolver != nil {
		go resolver.Run(ctx)
	}
	// /quitquitquit: no drain period, then exit.
	quitNow := func() { s.Quit(); quit() }
	o := &ops{s: s, resolver: resolver, reg: reg, id: id, level: level, quit: quitNow, flags: fs, started: time.Now(),
		appProbes: probes, appProbeOpts: appProbeOptions(podIP)}
	if err := o.start(ports, log); err != nil {
		return err
	}
	defer o.stop()
	log.Info("starting", zap.String("version", version), zap.Uint16("outbound_port", cfg.OutboundPort),
		zap.Uint16("inbound_port", cfg.InboundPort))
	if err := s.Run(ctx); err != nil {
		return err
	}
	for _, d := range []proxy.Direction{proxy.Outbound, proxy.Inbound} {
		st := s.Stats().Dir[d].Load()
		log.Info("stopped", zap.Stringer("direction", d), zap.Int64("accepted", st.Accepted),
			zap.Int64("completed", st.Completed), zap.Int64("dial_failures", st.DialFailures),
			zap.Int64("refused_loop", st.Loops), zap.Int64("refused_over_limit", st.OverLimit),
			zap.Int64("header_timeouts", st.HeaderTimeouts),
			zap.Int64("mtls", st.MTLS), zap.Any("tls_failures", st.TLSFailures),
			zap.Int64("plaintext", st.Plaintext), zap.Int64("refused_plaintext", st.PlaintextRefused),
			zap.Int64("bytes_sent", st.BytesSent), zap.Int64("bytes_received", st.BytesRecv))
	}
	return nil
}

func portFlag(name string, v uint) (uint16, error) {
	if v == 0 || v > 65535 {
		return 0, badUsage(fmt.Errorf("--%s: %d is not a port number (1-65535)", name, v))
	}
	return uint16(v), nil
}

// exempt checks that the proxy runs as the user and group capture exempts:
// under any other, each connection it makes would be captured and handed
// back to it, a loop bounded only by --max-connections.
func exempt(uid, gid uint32, euid, egid int) error {
	if euid == int(uid) && egid == int(gid) {
		return nil
	}
	return fmt.Errorf("--proxy-uid/--proxy-gid: running as UID %d GID %d, but capture exempts UID %d GID %d: "+
		"every connection the proxy made would be captured again; run it as %d:%d (setpriv --reuid=%d --regid=%d, "+
		"or runAsUser/runAsGroup), or give the IDs pillion init was given", euid, egid, uid, gid, uid, gid, uid, gid)
}

// proxyUserError says err, from package proxy, in the terms of `pillion
// proxy`'s user: a Config field by the flag that sets it, and a missing
// identity with the flags that give one.
func proxyUserError(err error) error {
	var fe *proxy.FieldError
	if errors.As(err, &fe) {
		if flag, hint := proxyFlag(fe.Field); flag != "" {
			err = fmt.Errorf("%s: %w%s", flag, fe.Err, hint)
		}
	}
	if errors.Is(err, proxy.ErrNoIdentity) {
		err = fmt.Errorf("%w: start the proxy with --spiffe-socket (or SPIFFE_ENDPOINT_SOCKET) or --svid-cert, --svid-key and --svid-bundle", err)
	}
	return err
}

// proxyFlag names the flag that sets a proxy.Config field (as
// proxy.FieldError names it), and what to add to an error about it; ""
// for a field no flag sets.
func proxyFlag(field string) (flag, hint string) {
	switch field {
	case "SniffTimeout":
		return "--sniff-timeout", " (declare ports opaque with --opaque-ports instead)"
	case "Discovery":
		return "--discovery-address", ""
	}
	flags := map[string]string{
		"OutboundPort": "outbound-port", "InboundPort": "inbound-port", "DialTimeout": "dial-timeout",
		"MaxConnections": "max-connections", "MaxHandshakes": "max-handshakes", "DrainPeriod": "drain-period",
		"DrainTimeout": "drain-timeout", "IdleTimeout": "idle-timeout", "HeaderTimeout": "header-timeout",
		"Pool.MaxConnsPerEndpoint": "max-conns-per-endpoint",
		"Pool.HTTP1IdleTimeout":    "http1-idle-timeout", "Pool.HTTP2IdleTimeout": "http2-idle-timeout",
		"Workload.Name": "workload-name", "Workload.Namespace": "workload-namespace", "Workload.App": "workload-app",
		"Workload.Version": "workload-version", "Workload.Cluster": "cluster-id",
	}
	if f, ok := flags[field]; ok {
		return "--" + f, ""
	}
	return "", ""
}
