//go:build !lean

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pillionmesh/pillion/injector"
)

const injectSummary = `Add the pillion sidecar to Kubernetes manifests offline, like
'istioctl kube-inject' and 'linkerd inject': read YAML or JSON documents from
-f FILE (or - for standard input), inject every Pod and the pod template of
every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob (also
inside kind: List), and write all documents to standard output. It makes the
same change the webhook would for a pod in a namespace labelled
pillion.io/inject=enabled, honouring the pods' annotations. What was injected
or skipped, and why, goes to standard error. Nothing is written when a
document is invalid.

Example:
  pillion inject -f deploy.yaml --config injector-config.yaml | kubectl apply -f -`

func runInject(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inject", injectSummary, stdout)
	file := fs.String("f", "", "manifest file to inject, - for standard input (required)")
	configPath := fs.String("config", "", "injector config file (the injector's ConfigMap config.yaml); default: image "+defaultImage()+", Workload API from the SPIFFE CSI driver")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return badUsage(errors.New("-f: required: a manifest file, or - for standard input"))
	}
	cfg, err := injectConfig(*configPath)
	if err != nil {
		return err
	}
	in := io.Reader(os.Stdin)
	if *file != "-" {
		fh, err := os.Open(*file)
		if err != nil {
			return badUsage(fmt.Errorf("-f: %w", err))
		}
		defer fh.Close()
		in = fh
	}
	reports, err := injector.Manifests(in, stdout, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	for _, r := range reports {
		if r.Result.Skipped != "" {
			fmt.Fprintf(stderr, "skipped %s: %s\n", r.Object, r.Result.Skipped)
		} else {
			fmt.Fprintf(stderr, "injected %s\n", r.Object)
		}
	}
	return nil
}

// defaultImage is the sidecar image of this version: the lean build (init,
// proxy, wait), see the Dockerfile.
func defaultImage() string { return "ghcr.io/pillionmesh/pillion-proxy:" + version }

// injectConfig loads --config, or builds the default config.
func injectConfig(path string) (*injector.Config, error) {
	if path != "" {
		cfg, err := injector.LoadConfig(path)
		if err != nil {
			return nil, badUsage(fmt.Errorf("--config: %w", err))
		}
		return cfg, nil
	}
	raw := injector.RawConfig{Image: defaultImage(), Identity: injector.Identity{CSI: &injector.WorkloadAPIVolume{}}}
	return raw.Validate()
}
