package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/admin"
	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
	"github.com/pillionmesh/pillion/proxy"
	"github.com/pillionmesh/pillion/proxy/resolve"
	"github.com/pillionmesh/pillion/proxy/upstream"
	"github.com/pillionmesh/pillion/sidecar"
)

// opsPorts are the ports of the sidecar's operator-facing servers.
type opsPorts struct {
	admin, health, prometheus uint
}

func addOpsFlags(fs *flag.FlagSet) *opsPorts {
	p := &opsPorts{}
	fs.UintVar(&p.admin, "admin-port", uint(sidecar.AdminPort), "port of the admin endpoint, on 127.0.0.1 only (always loopback)")
	fs.UintVar(&p.health, "health-port", uint(sidecar.HealthPort), "port of /healthz/ready and, with --app-probes, /app-health/ for kubelet probes, on all addresses")
	fs.UintVar(&p.prometheus, "prometheus-port", uint(sidecar.PrometheusPort), "port of /stats/prometheus for scrapers, on all addresses")
	return p
}

// ops runs the admin endpoint, the kubelet health endpoint and the
// Prometheus endpoint of one proxy.
type ops struct {
	s          *proxy.Server
	reg        *prometheus.Registry
	id         proxy.Identity // nil without mTLS
	level      zap.AtomicLevel
	quit       func()
	flags      *flag.FlagSet
	started    time.Time
	healthFail atomic.Bool
	servers    []*http.Server
	// appProbes are the application's probes the health port runs under
	// /app-health/; empty: none.
	appProbes appprobe.Set
	// appProbeOpts say where the probes that name no host go; zero:
	// 127.0.0.1.
	appProbeOpts prober.Options
	// resolver is the client of `pillion discovery`; nil without one.
	resolver *resolve.Resolver
}

// ready is the state the admin endpoint and kubelet see: the server's,
// unless an operator failed the health check.
func (o *ops) ready() (string, error) {
	if o.healthFail.Load() {
		return proxy.StateDraining, errors.New("health check failed by POST /healthcheck/fail")
	}
	return o.s.State()
}

// start listens on the three ports and serves them until stop. A port
// that cannot be bound is an error, and nothing is left listening.
func (o *ops) start(p *opsPorts, log *zap.Logger) error {
	for _, v := range []struct {
		name string
		port uint
	}{{"admin-port", p.admin}, {"health-port", p.health}, {"prometheus-port", p.prometheus}} {
		if v.port == 0 || v.port > 65535 {
			return badUsage(fmt.Errorf("--%s: %d is not a port number (1-65535)", v.name, v.port))
		}
	}
	adminL, err := admin.Listen(uint16(p.admin))
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	healthL, err := net.Listen("tcp", fmt.Sprintf(":%d", p.health))
	if err != nil {
		adminL.Close()
		return fmt.Errorf("health endpoint: %w", err)
	}
	promL, err := net.Listen("tcp", fmt.Sprintf(":%d", p.prometheus))
	if err != nil {
		adminL.Close()
		healthL.Close()
		return fmt.Errorf("prometheus endpoint: %w", err)
	}
	health := http.NewServeMux()
	health.HandleFunc("GET "+sidecar.ReadyPath, func(w http.ResponseWriter, r *http.Request) {
		state, err := o.ready()
		if err != nil {
			http.Error(w, state+": "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, state)
	})
	if len(o.appProbes) > 0 {
		// Not gated on o.ready: these report the application's health,
		// which kubelet must see while the sidecar starts or drains too.
		health.Handle("GET "+appprobe.PathPrefix, prober.NewHandler(o.appProbes, o.appProbeOpts))
		paths := zap.Strings("paths", slices.Sorted(maps.Keys(o.appProbes)))
		if ao := o.appProbeOpts; ao.PodIP.IsValid() {
			log.Info("serving application probes", paths, zap.Stringer("pod_ip", ao.PodIP), zap.Stringer("source", ao.Source))
		} else {
			log.Info("serving application probes; those that name no host go to 127.0.0.1, not to the pod's IP as kubelet's would: no --pod-ip ($"+
				appprobe.PodIPEnvVar+")", paths)
		}
	}
	prom := http.NewServeMux()
	prom.Handle("GET "+sidecar.PrometheusPath, promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	errLog := zap.NewStdLog(log.Named("ops"))
	for _, v := range []struct {
		l net.Listener
		h http.Handler
	}{{adminL, admin.New(o.sources(), log.Named("admin"))}, {healthL, health}, {promL, prom}} {
		srv := &http.Server{Handler: v.h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
		o.servers = append(o.servers, srv)
		go func() { _ = srv.Serve(v.l) }()
		log.Info("serving", zap.Stringer("addr", v.l.Addr()))
	}
	return nil
}

// stop closes the three servers.
func (o *ops) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, srv := range o.servers {
		_ = srv.Shutdown(ctx)
	}
}

func (o *ops) sources() admin.Sources {
	return admin.Sources{
		Ready:      o.ready,
		Gatherer:   o.reg,
		Clusters:   o.clusters,
		Listeners:  o.listeners,
		ConfigDump: o.configDump,
		Certs:      o.certs,
		ServerInfo: o.serverInfo,
		Level:      o.level,
		Drain:      o.s.Drain,
		Quit:       o.quit,
		HealthFail: o.healthFail.Store,
	}
}

// clusters shows the two upstream pools as clusters, their endpoints as
// hosts.
func (o *ops) clusters() []admin.Cluster {
	byProto := map[upstream.Protocol]*admin.Cluster{
		upstream.HTTP1: {Name: "http1_pool"},
		upstream.HTTP2: {Name: "http2_pool"},
	}
	for _, c := range o.s.PoolConns() {
		cl := byProto[c.Protocol]
		cl.Endpoints = append(cl.Endpoints, admin.Endpoint{
			Address: c.Endpoint, Protocol: c.Protocol.String(),
			ActiveConns: c.Open, TotalConns: uint64(c.Total), ConnectFailures: uint64(c.ConnectFailures),
			ActiveRequests: c.ActiveRequests, TotalRequests: uint64(c.TotalRequests),
		})
	}
	out := []admin.Cluster{*byProto[upstream.HTTP1], *byProto[upstream.HTTP2]}
	return append(out, discoveredClusters(o.s.Routes())...)
}

// workloadName is w as /clusters shows it, "name.namespace"; "" for nil.
func workloadName(w *upstream.Workload) string {
	if w == nil || w.Name == "" {
		return ""
	}
	return w.Name + "." + w.Namespace
}

// discoveredClusters shows each destination discovery answered for as a
// cluster named as Envoy names a Service's ("outbound|<port>||<name>.<namespace>",
// or the destination for a pod), its endpoints with their balancer state.
func discoveredClusters(routes []proxy.ServiceRoute) []admin.Cluster {
	out := make([]admin.Cluster, 0, len(routes))
	for _, r := range routes {
		name := r.Destination.String()
		if r.Service.Name != "" {
			name = r.Service.String()
		}
		c := admin.Cluster{Name: fmt.Sprintf("outbound|%d||%s", r.Destination.Port(), name)}
		for _, e := range r.Endpoints {
			health := "HEALTHY"
			switch {
			case e.Terminating:
				health = "DRAINING"
			case !e.Ready:
				health = "UNHEALTHY"
			}
			c.Endpoints = append(c.Endpoints, admin.Endpoint{
				Address: e.Addr.String(), Protocol: "balanced",
				ActiveRequests: e.Pending, TotalRequests: e.Requests,
				Balanced: &admin.Balanced{Weight: e.Weight, Zone: e.Zone, Health: health, Ejected: e.Ejected,
					EWMA: e.EWMA, Failures: e.Failures, Meshed: e.Meshed, Identity: e.Identity, Workload: workloadName(e.Workload)},
			})
		}
		out = append(out, c)
	}
	return out
}

func (o *ops) listeners() []admin.Listener {
	var out []admin.Listener
	for _, l := range o.s.Listeners() {
		out = append(out, admin.Listener{Name: l.Direction.String(), Address: l.Addr.String()})
	}
	return out
}

// configDump is the config in effect: the flags and the config file as
// parsed. Neither holds secrets: the identity's files are named, never
// read out.
func (o *ops) configDump() any {
	file, applied := o.s.Config()
	return map[string]any{
		"flags":       o.flagValues(),
		"config_file": file,
		"applied":     applied,
	}
}

func (o *ops) certs() admin.Certs {
	if o.id == nil {
		return admin.Certs{}
	}
	svid, err := o.id.GetX509SVID()
	if err != nil {
		return admin.Certs{}
	}
	certs := admin.Certs{SVID: ptr(admin.CertInfoFrom(svid.Certificates[0]))}
	if b, err := o.id.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
		for _, ca := range b.X509Authorities() {
			certs.Bundle = append(certs.Bundle, admin.CertInfoFrom(ca))
		}
	}
	return certs
}

func ptr[T any](v T) *T { return &v }

func (o *ops) serverInfo() admin.ServerInfo {
	return admin.ServerInfo{Version: version, Started: o.started, CommandLineOptions: o.flagValues()}
}

func (o *ops) flagValues() map[string]string {
	m := map[string]string{}
	o.flags.VisitAll(func(f *flag.Flag) { m[f.Name] = f.Value.String() })
	return m
}
