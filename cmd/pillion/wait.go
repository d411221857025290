package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/sidecar"
)

const waitSummary = `Wait until the sidecar in this pod is ready: poll its readiness endpoint
(the one kubelet probes, :15021/healthz/ready) until it answers 200, then exit
0; after --timeout, exit 1 saying why it was not ready. Run it as the
application container's postStart hook (or before the application in its
command) so the application starts only once the sidecar can carry its
traffic — Istio's holdApplicationUntilProxyStarts.

Example (a container's lifecycle):
  postStart: {exec: {command: [pillion, wait, --timeout=60s]}}`

func runWait(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("wait", waitSummary, stdout)
	url := fs.String("url", fmt.Sprintf("http://127.0.0.1:%d%s", sidecar.HealthPort, sidecar.ReadyPath), "the sidecar's readiness endpoint")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	interval := fs.Duration("interval", 200*time.Millisecond, "how often to ask")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *timeout <= 0:
		return badUsage(fmt.Errorf("--timeout: %v: must be positive", *timeout))
	case *interval <= 0:
		return badUsage(fmt.Errorf("--interval: %v: must be positive", *interval))
	case !strings.HasPrefix(*url, "http://") && !strings.HasPrefix(*url, "https://"):
		return badUsage(fmt.Errorf("--url: %q: want an http:// URL", *url))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	client := &http.Client{Timeout: min(*interval*5, time.Second)}
	var last error
	for {
		err := probe(ctx, client, *url)
		if err == nil {
			fmt.Fprintln(stdout, "the sidecar is ready")
			return nil
		}
		// A probe cut short by the time-out says less than the answer
		// before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the sidecar was not ready after %v: %w", *timeout, last)
		case <-time.After(*interval):
		}
	}
}

// probe asks url once: nil on 200, else what was wrong.
func probe(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errors.New("no answer in time")
		}
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
