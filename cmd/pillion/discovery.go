//go:build !lean

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pillionmesh/pillion/discovery"
	"github.com/pillionmesh/pillion/proxy"
)

const discoverySummary = `Serve the discovery API to the sidecars: for each destination ip:port a
sidecar subscribes to (the address its application connected to), the
Service's endpoints behind it (address, zone, ready/serving/terminating,
whether a pillion sidecar runs there and the SPIFFE ID it must present,
protocol hints from appProtocol), or the pod at that IP, or "unknown"; and
again whenever that changes. One gRPC stream per sidecar
(pillion.discovery.v1.Discovery/Watch) on --port, in mTLS (TLS 1.3) with
the identity of --spiffe-socket or --svid-cert/--svid-key/--svid-bundle,
to sidecars of the same trust domain only; the identities it announces are
in that trust domain.

It watches Services, EndpointSlices and Pods of every namespace (list and
watch only) through --kubeconfig, by default the pod's in-cluster config,
else $KUBECONFIG, and keeps only the fields the answers need. Streams are
refused (Unavailable) until the informers synced. /healthz/ready on
--metrics-port answers 200 once they synced and the identity has an SVID;
Prometheus metrics are at /metrics there. SIGINT or SIGTERM: readiness
fails, open streams end with Unavailable (their sidecars reconnect to
another replica) and the servers stop within --shutdown-timeout. A bad flag
exits 2 naming it.`

// discoveryServerFlags are the discovery server's settings after parsing.
type discoveryServerFlags struct {
	address            string
	port, metricsPort  uint16
	cfg                discovery.ServerConfig
	shutdownTimeout    time.Duration
	kubeconfig, format string
}

func runDiscovery(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("discovery", discoverySummary, stdout)
	var f discoveryServerFlags
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file of the cluster to watch; default the in-cluster config (the pod's service account), else $KUBECONFIG")
	fs.StringVar(&f.address, "address", "", "address to listen on (empty: all)")
	port := fs.Uint("port", 15012, "gRPC port of the discovery API (mTLS)")
	metricsPort := fs.Uint("metrics-port", 15014, "plain HTTP port of /metrics and /healthz/ready")
	fs.IntVar(&f.cfg.MaxSubscriptions, "max-subscriptions", discovery.DefaultMaxSubscriptions,
		"destinations one stream may subscribe to; one more ends the stream with ResourceExhausted")
	fs.DurationVar(&f.cfg.Coalesce, "coalesce", discovery.DefaultCoalesce,
		"least time between two batches of updates on one stream: changes within it are sent once, in their latest state")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM, how long the servers may take to stop")
	svid := addSVIDFlags(fs)
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	fs.TextVar(&level, "log-level", level, "log level: debug, info, warn or error")
	fs.StringVar(&f.format, "log-format", "json", "log format: json, or console for humans")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := f.check(*port, *metricsPort); err != nil {
		return err
	}
	restCfg, err := kubeConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	log := newLogger(level, stderr, f.format)
	defer func() { _ = log.Sync() }()
	id, closeID, err := svid.source(log)
	if err != nil {
		return err
	}
	defer closeID()
	if id == nil {
		return badUsage(errors.New("--spiffe-socket: missing: discovery serves in mTLS only; give --spiffe-socket (or $SPIFFE_ENDPOINT_SOCKET) or --svid-cert, --svid-key and --svid-bundle"))
	}
	restCfg.UserAgent = "pillion-discovery/" + version
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return badUsage(fmt.Errorf("--kubeconfig: %w", err))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	idx, err := discovery.NewIndex(client, id, log, reg)
	if err != nil {
		return err
	}
	srv, err := discovery.NewServer(idx, f.cfg, log, reg)
	if err != nil {
		return err
	}
	return serveDiscovery(ctx, f, idx, srv, id, reg, log)
}

// check validates the flags that need no I/O.
func (f *discoveryServerFlags) check(port, metricsPort uint) error {
	var err error
	if f.port, err = portFlag("port", port); err != nil {
		return err
	}
	if f.metricsPort, err = portFlag("metrics-port", metricsPort); err != nil {
		return err
	}
	switch {
	case f.port == f.metricsPort:
		return badUsage(fmt.Errorf("--metrics-port: %d is also the --port", f.port))
	case f.cfg.MaxSubscriptions <= 0:
		return badUsage(fmt.Errorf("--max-subscriptions: %d: must be positive", f.cfg.MaxSubscriptions))
	case f.cfg.Coalesce <= 0:
		return badUsage(fmt.Errorf("--coalesce: %v: must be positive", f.cfg.Coalesce))
	case f.shutdownTimeout < 0:
		return badUsage(fmt.Errorf("--shutdown-timeout: %v: must not be negative", f.shutdownTimeout))
	case f.format != "json" && f.format != "console":
		return badUsage(fmt.Errorf("--log-format: %q: want json or console", f.format))
	}
	return nil
}

// kubeConfig returns the config of the API server to watch: the file
// given, else the in-cluster config, else $KUBECONFIG's files.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, badUsage(fmt.Errorf("--kubeconfig: %w", err))
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	switch {
	case err == nil:
		return cfg, nil
	case !errors.Is(err, rest.ErrNotInCluster):
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	env := os.Getenv(clientcmd.RecommendedConfigPathEnvVar)
	if env == "" {
		return nil, badUsage(errors.New("--kubeconfig: missing: not running in a cluster, and $KUBECONFIG is empty"))
	}
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(env)}
	cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, badUsage(fmt.Errorf("--kubeconfig: $KUBECONFIG=%s: %w", env, err))
	}
	return cfg, nil
}

// serveDiscovery runs the index, the gRPC server and the metrics server
// until ctx ends, then stops them: readiness fails, the gRPC server stops
// taking streams, and the open ones are ended so that it can stop.
func serveDiscovery(ctx context.Context, f discoveryServerFlags, idx *discovery.Index, srv *discovery.Server, id proxy.Identity, reg *prometheus.Registry, log *zap.Logger) error {
	grpcL, err := net.Listen("tcp", net.JoinHostPort(f.address, fmt.Sprint(f.port)))
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	metricsL, err := net.Listen("tcp", net.JoinHostPort(f.address, fmt.Sprint(f.metricsPort)))
	if err != nil {
		grpcL.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	stopping := make(chan struct{})
	hs := metricsServer(reg, func(w http.ResponseWriter, _ *http.Request) {
		if err := discoveryReady(idx, id, stopping); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	}, zap.NewStdLog(log.Named("http")))
	gs := discovery.NewGRPCServer(srv, id)

	ictx, stopIndex := context.WithCancel(context.Background())
	indexDone := make(chan struct{})
	go func() { idx.Run(ictx); close(indexDone) }()
	go logSynced(ictx, idx, log)
	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(grpcL) }()
	go func() { errc <- hs.Serve(metricsL) }()
	log.Info("discovery serving", zap.String("version", version), zap.String("grpc", grpcL.Addr().String()),
		zap.String("metrics", metricsL.Addr().String()))
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	log.Info("discovery stopping")
	close(stopping)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	srv.Close() // ends the streams GracefulStop would wait for
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	select {
	case <-stopped:
	case <-sctx.Done():
		gs.Stop()
	}
	_ = hs.Shutdown(sctx)
	stopIndex()
	// A reflector backing off from an API server it cannot reach only
	// sees the end after its back-off: do not wait longer than allowed.
	select {
	case <-indexDone:
	case <-sctx.Done():
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// discoveryReady returns nil when discovery can answer: its informers
// synced, it has an SVID, and it is not stopping.
func discoveryReady(idx *discovery.Index, id proxy.Identity, stopping <-chan struct{}) error {
	select {
	case <-stopping:
		return errors.New("stopping")
	default:
	}
	if !idx.Synced() {
		return errors.New("the Kubernetes informers have not synced yet")
	}
	if err := id.Ready(); err != nil {
		return fmt.Errorf("no SVID: %w", err)
	}
	return nil
}

// logSynced logs when the index synced, and every minute until it has.
func logSynced(ctx context.Context, idx *discovery.Index, log *zap.Logger) {
	start := time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := idx.WaitForSync(wctx)
		cancel()
		switch {
		case err == nil:
			log.Info("informers synced", zap.Duration("took", time.Since(start)))
			return
		case ctx.Err() != nil:
			return
		}
		log.Warn("informers not synced yet: is the API server reachable, and may this service account list and watch services, endpointslices and pods?",
			zap.Duration("waited", time.Since(start)))
	}
}
