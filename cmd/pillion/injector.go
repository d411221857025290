//go:build !lean

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filewatch"
	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/mtls"
)

const injectorSummary = `Serve the mutating admission webhook that adds the pillion sidecar to pods:
admission.k8s.io/v1 AdmissionReviews over HTTPS on --port, at /inject/namespace
(pods of namespaces labelled pillion.io/inject=enabled: injected unless they
opt out) and /inject/pod (other namespaces: only pods annotated
pillion.io/inject: "enabled"). The MutatingWebhookConfiguration under deploy/
sends each path its namespaces. It never calls the Kubernetes API.

The serving certificate and the config file are re-read when they change
(once two reads a second apart agree) and on SIGHUP; a changed config that
does not validate is logged once and the one in use stays. /healthz/ready
answers on both ports; Prometheus metrics are on --metrics-port at /metrics.
A bad flag or config file exits 2 naming it.`

// injectorFlags are the webhook server's settings after parsing.
type injectorFlags struct {
	config, cert, key, address string
	port, metricsPort          uint
	shutdownTimeout            time.Duration
}

func runInjector(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("injector", injectorSummary, stdout)
	var f injectorFlags
	fs.StringVar(&f.config, "config", "/etc/pillion/injector/config.yaml", "injector config file (image, identity, sidecar resources, the sidecar's config): the ConfigMap deploy/ installs")
	fs.StringVar(&f.cert, "tls-cert", "/etc/pillion/injector/tls/tls.crt", "serving certificate (PEM, leaf first); re-read when it changes")
	fs.StringVar(&f.key, "tls-key", "/etc/pillion/injector/tls/tls.key", "serving certificate's private key (PEM)")
	fs.StringVar(&f.address, "address", "", "address to listen on (empty: all)")
	fs.UintVar(&f.port, "port", 9443, "HTTPS port of the webhook")
	fs.UintVar(&f.metricsPort, "metrics-port", 9090, "plain HTTP port of /metrics and /healthz/ready")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGTERM, how long reviews in flight may take to finish")
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	fs.TextVar(&level, "log-level", level, "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "log format: json, or console for humans")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		v    uint
	}{{"port", f.port}, {"metrics-port", f.metricsPort}} {
		if p.v == 0 || p.v > 65535 {
			return badUsage(fmt.Errorf("--%s: %d is not a port number (1-65535)", p.name, p.v))
		}
	}
	if f.port == f.metricsPort {
		return badUsage(fmt.Errorf("--metrics-port: %d is also the --port", f.port))
	}
	cfgData, err := os.ReadFile(f.config)
	if err != nil {
		return badUsage(fmt.Errorf("--config: %w", err))
	}
	cfg, err := injector.ParseConfig(cfgData)
	if err != nil {
		return badUsage(fmt.Errorf("--config: %s: %w", f.config, err))
	}
	log := newLogger(level, stderr, *logFormat)
	defer func() { _ = log.Sync() }()
	certs, err := injector.NewCertFiles(f.cert, f.key, log)
	if err != nil {
		return badUsage(fmt.Errorf("--tls-cert, --tls-key: %w", err))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wh, err := injector.NewWebhook(cfg, log, reg)
	if err != nil {
		return err
	}
	cfgWatch := newInjectorConfigWatcher(f.config, cfgData, wh, log)
	go cfgWatch.Run(ctx)
	go certs.Run(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go forceOn(ctx, hup, cfgWatch.Force, certs.Reload)
	return serveInjector(ctx, f, wh, certs, reg, log)
}

// newInjectorConfigWatcher watches the injector's config file at path,
// whose contents current wh runs with, and gives the webhook each new
// config that validates (package filewatch: once two reads agree, or on
// SIGHUP); one that does not, or a file that cannot be read, is logged
// once and the config in use stays. A ConfigMap update reaches the file
// within a minute or so, so a change needs no restart.
func newInjectorConfigWatcher(path string, current []byte, wh *injector.Webhook, log *zap.Logger) *filewatch.Watcher {
	return filewatch.New(filewatch.Options{
		Paths:    []string{path},
		Interval: configPollInterval,
		Current:  [][]byte{current},
		Apply: func(contents [][]byte) error {
			cfg, err := injector.ParseConfig(contents[0])
			if err != nil {
				return err
			}
			wh.SetConfig(cfg)
			log.Info("injector config reloaded", zap.String("path", path), zap.String("image", cfg.Image))
			return nil
		},
		Refused: func(err error) {
			log.Warn("refusing the changed injector config; the one in use stays", zap.String("path", path), zap.Error(err))
		},
		Log: log,
	})
}

// serveInjector runs the HTTPS webhook and the metrics server until ctx
// ends, then lets reviews in flight finish.
func serveInjector(ctx context.Context, f injectorFlags, wh *injector.Webhook, certs *injector.CertFiles, reg *prometheus.Registry, log *zap.Logger) error {
	ready := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") }
	hooks := http.NewServeMux()
	hooks.Handle("/inject/", wh.Handler())
	hooks.HandleFunc("GET /healthz/ready", ready)

	hookL, err := net.Listen("tcp", net.JoinHostPort(f.address, fmt.Sprint(f.port)))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	metricsL, err := net.Listen("tcp", net.JoinHostPort(f.address, fmt.Sprint(f.metricsPort)))
	if err != nil {
		hookL.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	errLog := zap.NewStdLog(log.Named("http"))
	servers := []*http.Server{
		{
			Handler:   hooks,
			TLSConfig: mtls.WebhookServerConfig(certs.GetCertificate),
			// The API server waits timeoutSeconds (10 in deploy/) for
			// the whole review; nothing here should take longer.
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       90 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          errLog,
		},
		metricsServer(reg, ready, errLog),
	}
	errc := make(chan error, 2)
	go func() { errc <- servers[0].ServeTLS(hookL, "", "") }()
	go func() { errc <- servers[1].Serve(metricsL) }()
	log.Info("injector serving", zap.String("webhook", hookL.Addr().String()), zap.String("metrics", metricsL.Addr().String()))
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	log.Info("injector stopping")
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// metricsServer is the plain HTTP server of a control-plane command's
// --metrics-port: /metrics from reg, and /healthz/ready answered by ready.
func metricsServer(reg *prometheus.Registry, ready http.HandlerFunc, errLog *log.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz/ready", ready)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, ErrorLog: errLog}
}
