package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// soakSample is one reading of a sidecar's process.
type soakSample struct {
	at         time.Duration // since the load started
	rss        int64         // bytes (VmRSS)
	goroutines int           // go_goroutines on its admin endpoint
	fds        int           // entries of /proc/<pid>/fd
}

// sidecarProbe reads one sidecar: its process from /proc, the rest from
// its admin endpoint, from inside its pod over one kept-alive connection
// (two at most, as the reloads read it too: the descriptor count includes
// them). Only the sampler's goroutine writes samples and serials.
type sidecarProbe struct {
	name    string
	sc      *meshtest.Sidecar
	pid     int
	admin   *meshtest.HTTPClient
	samples []soakSample
	serials []string // the SVID serial numbers /certs showed, each change once
}

func newProbe(name string, sc *meshtest.Sidecar) (*sidecarProbe, error) {
	pid, err := sc.ProxyPID()
	if err != nil {
		return nil, err
	}
	return &sidecarProbe{name: name, sc: sc, pid: pid, admin: meshtest.NewHTTPClient(sc.Pod, false)}, nil
}

// get answers GET path on the admin endpoint; anything but 200 is an error.
func (p *sidecarProbe) get(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", adminURL+path, nil)
	if err != nil {
		return nil, err
	}
	res, err := p.admin.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: admin %s: %w", p.name, path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %q", res.Status, body)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: admin %s: %w", p.name, path, err)
	}
	return body, nil
}

// sample reads the process and the admin endpoint once, and notes the
// SVID's serial when it changed.
func (p *sidecarProbe) sample(at time.Duration) error {
	rss, err := meshtest.RSS(p.pid)
	if err != nil {
		return err
	}
	fds, err := meshtest.OpenFDs(p.pid)
	if err != nil {
		return err
	}
	stats, err := p.stats("^go_goroutines$")
	if err != nil {
		return err
	}
	v, ok := strings.CutPrefix(stats, "go_goroutines: ")
	g, perr := strconv.Atoi(v)
	if !ok || perr != nil {
		return fmt.Errorf("%s: /stats go_goroutines: %q", p.name, stats)
	}
	p.samples = append(p.samples, soakSample{at: at, rss: rss, goroutines: g, fds: fds})

	body, err := p.get("/certs")
	if err != nil {
		return err
	}
	var certs struct {
		Certificates []struct {
			CertChain []struct {
				SerialNumber string `json:"serial_number"`
			} `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(body, &certs); err != nil || len(certs.Certificates) == 0 || len(certs.Certificates[0].CertChain) == 0 {
		return fmt.Errorf("%s: /certs without an SVID (%v): %s", p.name, err, body)
	}
	if s := certs.Certificates[0].CertChain[0].SerialNumber; len(p.serials) == 0 || p.serials[len(p.serials)-1] != s {
		p.serials = append(p.serials, s)
	}
	return nil
}

// stats is the sidecar's /stats lines whose names match the RE2 filter,
// "name{labels}: value" each.
func (p *sidecarProbe) stats(filter string) (string, error) {
	body, err := p.get("/stats?filter=" + url.QueryEscape(filter))
	return strings.TrimSpace(string(body)), err
}

// applied is when the sidecar applied the config it runs (/config_dump).
func (p *sidecarProbe) applied() (time.Time, error) {
	body, err := p.get("/config_dump")
	if err != nil {
		return time.Time{}, err
	}
	var dump struct {
		Applied time.Time `json:"applied"`
	}
	if err := json.Unmarshal(body, &dump); err != nil {
		return time.Time{}, fmt.Errorf("%s: /config_dump: %w", p.name, err)
	}
	return dump.Applied, nil
}

// sampleEvery samples every probe every interval, from start, until stop
// ends. It stops at the first error and returns it.
func sampleEvery(stop context.Context, start time.Time, every time.Duration, probes []*sidecarProbe) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		for _, p := range probes {
			if err := p.sample(time.Since(start)); err != nil {
				return err
			}
		}
		select {
		case <-stop.Done():
			return nil
		case <-tick.C:
			if stop.Err() != nil { // the load has ended: no sample of its wind-down
				return nil
			}
		}
	}
}

// soakConfigs are a's and b's config files of generation gen: the mesh
// section, and chains that the load goes through. b's inbound chain lets
// only a in (authz; every opaque connection is checked too), has a rate
// limit far above the load, and stamps gen on every response
// (x-soak-config), which the load checks.
func soakConfigs(gen int) (a, b string) {
	a = meshConfig + "outbound:\n  filters:\n" +
		"    - timeout: {request: 1h}\n" + // a long gRPC stream is one request: longer than any soak
		fmt.Sprintf("    - headers: {request: {set: {x-soak-config: \"%d\"}}}\n", gen)
	b = meshConfig + "inbound:\n  filters:\n" +
		fmt.Sprintf("    - authz: {allow: [%q]}\n", meshtest.WorkloadID("default", "a")) +
		"    - ratelimit: {requestsPerSecond: 100000}\n" +
		fmt.Sprintf("    - headers: {response: {set: {x-soak-config: \"%d\"}}}\n", gen)
	return a, b
}

// soakReloads counts the config reloads the soak made and saw applied.
type soakReloads struct {
	made    int
	applied []int    // per probe
	errs    []string // reloads a sidecar did not apply, or could not be checked
}

// reloadEvery rewrites both sidecars' config files with the next
// generation every interval until stop ends, and waits (up to 10 s) for
// each sidecar's /config_dump to show a newer config applied. Odd
// generations are picked up by the sidecars' poll of the file, even ones
// are also signalled with SIGHUP, so both ways are exercised.
func reloadEvery(stop context.Context, start time.Time, every time.Duration, m *httpMesh, probes []*sidecarProbe) *soakReloads {
	r := &soakReloads{applied: make([]int, len(probes))}
	files := []string{m.configA, m.configB}
	fail := func(format string, args ...any) {
		r.errs = append(r.errs, fmt.Sprintf("%6.1fs ", time.Since(start).Seconds())+fmt.Sprintf(format, args...))
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for gen := 1; ; gen++ {
		select {
		case <-stop.Done():
			return r
		case <-tick.C:
		}
		if end, ok := stop.Deadline(); ok && time.Until(end) < every/2 {
			return r // too late for the load to see it
		}
		before := make([]time.Time, len(probes))
		for i, p := range probes {
			var err error
			if before[i], err = p.applied(); err != nil {
				fail("generation %d: %v", gen, err)
				return r
			}
		}
		a, b := soakConfigs(gen)
		for i, text := range []string{a, b} {
			if err := meshtest.ReplaceConfig(files[i], text); err != nil {
				fail("generation %d: %v", gen, err)
				return r
			}
		}
		r.made++
		for i, p := range probes {
			if gen%2 == 0 {
				if err := p.sc.Proxy.Signal(unix.SIGHUP); err != nil {
					fail("generation %d: SIGHUP to %s: %v", gen, p.name, err)
				}
			}
			if err := waitApplied(p, before[i], 10*time.Second); err != nil {
				fail("generation %d: %v", gen, err)
				continue
			}
			r.applied[i]++
		}
	}
}

// waitApplied waits until p's config was applied after before.
func waitApplied(p *sidecarProbe, before time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		at, err := p.applied()
		if err != nil {
			return err
		}
		if at.After(before) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not apply the new config in %v (applied %v)", p.name, timeout, at)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
