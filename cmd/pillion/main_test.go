package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

// wantUsageError runs pillion with args (the subcommand first) and checks
// that it exits 2 saying want, then where to find the usage, on stderr
// only.
func wantUsageError(t *testing.T, args []string, want string) {
	t.Helper()
	code, stdout, stderr := runCmd(args...)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if want := want + "\nRun 'pillion " + args[0] + " --help' for usage.\n"; stderr != want {
		t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
}

func TestTopLevel(t *testing.T) {
	for _, tt := range []struct {
		name       string
		args       []string
		code       int
		stdoutHas  string
		stderrHead string
	}{
		{"no command", nil, 2, "Usage: pillion <command> [flags]", ""},
		{"help", []string{"--help"}, 0, "  proxy     run the sidecar proxy", ""},
		{"unknown", []string{"nope"}, 2, "", `pillion: unknown command "nope"`},
		{"version", []string{"version"}, 0, "pillion dev (go", ""},
		{"version extra arg", []string{"version", "x"}, 2, "", `pillion version: unexpected argument "x"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			if !strings.Contains(stdout, tt.stdoutHas) {
				t.Errorf("stdout %q does not contain %q", stdout, tt.stdoutHas)
			}
			if first, _, _ := strings.Cut(stderr, "\n"); first != tt.stderrHead {
				t.Errorf("stderr starts %q, want %q", first, tt.stderrHead)
			}
		})
	}
}

// TestProxyBadFlags: each bad flag exits 2 with one line naming it, before
// anything listens.
func TestProxyBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--outbound-port=70000"}, "pillion proxy: --outbound-port: 70000 is not a port number (1-65535)"},
		{[]string{"--inbound-port=0"}, "pillion proxy: --inbound-port: 0 is not a port number (1-65535)"},
		{[]string{"--inbound-port=15001"}, "pillion proxy: --inbound-port: 15001 is also the outbound port; they must differ"},
		{[]string{"--dial-timeout=0s"}, "pillion proxy: --dial-timeout: 0s: must be positive"},
		{[]string{"--dial-timeout=soon"}, `pillion proxy: invalid value "soon" for flag -dial-timeout: parse error`},
		{[]string{"--discovery-initial-fetch-timeout=0s"}, "pillion proxy: --discovery-initial-fetch-timeout: 0s: must be positive"},
		{[]string{"--max-connections=0"}, "pillion proxy: --max-connections: 0: must be positive"},
		{[]string{"--drain-timeout=-1s"}, "pillion proxy: --drain-timeout: -1s: must not be negative"},
		{[]string{"--drain-period=-1s"}, "pillion proxy: --drain-period: -1s: must not be negative (0 closes the listeners at once)"},
		{[]string{"--log-level=loud"}, `pillion proxy: invalid value "loud" for flag -log-level: unrecognized level: "loud"`},
		{[]string{"--sniff-timeout=0s"}, "pillion proxy: --sniff-timeout: 0s: must be positive (declare ports opaque with --opaque-ports instead)"},
		{[]string{"--header-timeout=0s"}, "pillion proxy: --header-timeout: 0s: must be positive and at most 10m0s"},
		{[]string{"--header-timeout=1h"}, "pillion proxy: --header-timeout: 1h0m0s: must be positive and at most 10m0s"},
		{[]string{"--opaque-ports=25,smtp"}, `pillion proxy: --opaque-ports: "25,smtp": "smtp" is not a port number (1-65535)`},
		{[]string{"--svid-cert=/x/cert.pem"}, "pillion proxy: --svid-key: missing: --svid-cert, --svid-key and --svid-bundle go together"},
		{[]string{"--svid-cert=/x/cert.pem", "--svid-key=/x/key.pem", "--svid-bundle=/x/bundle.pem", "--spiffe-socket=/run/agent.sock"},
			"pillion proxy: --spiffe-socket and --svid-cert/--svid-key/--svid-bundle: give one identity source, not both"},
		{[]string{"--svid-cert=/x/cert.pem", "--svid-key=/x/key.pem", "--svid-bundle=/x/bundle.pem"},
			"pillion proxy: --svid-cert, --svid-key, --svid-bundle: mtls: open /x/cert.pem: no such file or directory"},
		{[]string{"--spiffe-socket=tcp:agent"}, `pillion proxy: --spiffe-socket: "tcp:agent": workload endpoint tcp socket URI must not be opaque`},
		{[]string{"--workload-name=web\nx"}, `pillion proxy: --workload-name: "web\nx": has a control character`},
		{[]string{"--workload-app=" + strings.Repeat("a", 254)}, "pillion proxy: --workload-app: 254 bytes: at most 253"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			wantUsageError(t, append([]string{"proxy"}, tt.args...), tt.want)
		})
	}
}

// TestProxyMeshNeedsIdentity: a config that sends to the mesh, or is
// STRICT, is refused without an identity source: mTLS cannot be done, and
// plaintext is never the fallback.
func TestProxyMeshNeedsIdentity(t *testing.T) {
	for _, tt := range []struct{ config, want string }{
		{"mesh: {networks: [10.0.0.0/8]}", "mesh.networks: traffic to the mesh is mTLS and needs an identity"},
		{"mesh: {mode: STRICT}", "mesh.mode: STRICT needs an identity"},
	} {
		path := filepath.Join(t.TempDir(), "pillion.yaml")
		if err := os.WriteFile(path, []byte(tt.config), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runCmd("proxy", "--config="+path)
		if code != 2 || !strings.Contains(stderr, "--config: "+path+": "+tt.want) || !strings.Contains(stderr, "--spiffe-socket") {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q with the flags to give", tt.config, code, stderr, tt.want)
		}
	}
}

func TestProxyHelp(t *testing.T) {
	code, stdout, _ := runCmd("proxy", "--help")
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	for _, want := range []string{"Usage: pillion proxy [flags]", "SO_ORIGINAL_DST", "-dial-timeout", "-max-connections",
		"-drain-period", "-drain-timeout", "-idle-timeout", "-log-level", "-sniff-timeout", "-header-timeout", "(default 10s)", "Linkerd", "-opaque-ports", "-spiffe-socket", "-svid-cert", "SPIFFE_ENDPOINT_SOCKET", `(default "25,587,3306,4444,5432,6379,9300,11211")`,
		"-workload-name", "$PILLION_WORKLOAD_NAME", "-workload-namespace", "-workload-app", "-workload-version", "-cluster-id", `(default "Kubernetes")`,
		"one line per connection only at debug", "format: envoy", "generateRequestId"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("proxy --help lacks %q", want)
		}
	}
}

// TestLeanBuild: the build the sidecar image ships (tag lean) links no
// Kubernetes API machinery, which costs a sidecar megabytes of memory;
// the full build does, for the control plane's commands.
func TestLeanBuild(t *testing.T) {
	k8s := func(tags string) int {
		out, err := exec.Command("go", "list", "-tags="+tags, "-deps", ".").Output()
		if err != nil {
			t.Fatalf("go list -tags=%q: %v", tags, err)
		}
		n := 0
		for _, p := range strings.Fields(string(out)) {
			if strings.HasPrefix(p, "k8s.io/") {
				n++
			}
		}
		return n
	}
	if n := k8s("lean"); n != 0 {
		t.Errorf("the lean build links %d k8s.io packages, want none", n)
	}
	if n := k8s(""); n == 0 {
		t.Error("the full build links no k8s.io package: the test no longer tells the builds apart")
	}
}

// TestProxyRefusesAnotherUser: under a user or group other than the one
// capture exempts, the proxy would capture its own connections: it exits 2
// naming both, before anything runs; --proxy-uid/--proxy-gid name the
// exempt ones.
func TestProxyRefusesAnotherUser(t *testing.T) {
	if err := exempt(1337, 1337, 1337, 1337); err != nil {
		t.Errorf("as 1337:1337, exempt 1337:1337: %v", err)
	}
	for _, c := range [][4]int{{1337, 1337, 0, 1337}, {1337, 1337, 1337, 0}, {1000, 1000, 1337, 1337}} {
		err := exempt(uint32(c[0]), uint32(c[1]), c[2], c[3])
		want := fmt.Sprintf("--proxy-uid/--proxy-gid: running as UID %d GID %d, but capture exempts UID %d GID %d", c[2], c[3], c[0], c[1])
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("as %d:%d, exempt %d:%d: %v, want %q…", c[2], c[3], c[0], c[1], err, want)
		}
	}
	cases := [][]string{{"--proxy-uid=4242", "--proxy-gid=4242"}}
	if os.Geteuid() != 1337 || os.Getegid() != 1337 {
		cases = append(cases, nil) // the defaults, 1337
	}
	for _, args := range cases {
		code, stdout, stderr := runCmd(append([]string{"proxy"}, args...)...)
		want := fmt.Sprintf("pillion proxy: --proxy-uid/--proxy-gid: running as UID %d GID %d, but capture exempts UID ", os.Geteuid(), os.Getegid())
		if code != 2 || stdout != "" || !strings.HasPrefix(stderr, want) {
			t.Errorf("proxy %q: exit %d, stderr %q; want 2 and %q…", args, code, stderr, want)
		}
	}
	code, _, stderr := runCmd("proxy", "--proxy-uid=0")
	if want := "pillion proxy: --proxy-uid: 0 is root: every process running as root would escape capture\n"; code != 2 || !strings.HasPrefix(stderr, want) {
		t.Errorf("--proxy-uid=0: exit %d, stderr %q; want 2 and %q", code, stderr, want)
	}
}

// TestProxyLogConfigRefused: the access log's format and the chains'
// generateRequestId are checked at start, exit 2 naming the field.
func TestProxyLogConfigRefused(t *testing.T) {
	for _, tt := range []struct{ config, want string }{
		{"outbound: {filters: [{accesslog: {format: text}}]}", `outbound.filters[0].accesslog.format: want json or envoy, got "text"`},
		{"inbound: {generateRequestId: false, filters: [{requestid: {}}]}",
			"inbound.generateRequestId: false, but inbound.filters[0].requestid makes request IDs: drop one of the two"},
	} {
		path := filepath.Join(t.TempDir(), "pillion.yaml")
		if err := os.WriteFile(path, []byte(tt.config), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runCmd("proxy", "--config="+path)
		if code != 2 || !strings.Contains(stderr, path+": "+tt.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", tt.config, code, stderr, tt.want)
		}
	}
}
