package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/redirect"
)

// runIn runs `pillion args...` in-process, inside pod's network namespace
// when pod is not nil, and returns the exit code, stdout and stderr.
func runIn(t *testing.T, pod *testpod.Pod, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := -1
	do := func() error {
		code = run(context.Background(), args, &stdout, &stderr)
		return nil
	}
	if pod == nil {
		_ = do()
	} else if err := pod.Run(do); err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func natSaves(t *testing.T, pod *testpod.Pod) string {
	t.Helper()
	var all string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := pod.Exec(context.Background(), cmd, "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		all += redirect.NormalizeSave(out)
	}
	return all
}

func newInitPod(t *testing.T) *testpod.Pod {
	t.Helper()
	privileged.Require(t, "ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save")
	return testpod.NewNode(t).AddPod(t, "app")
}

func TestInitUsage(t *testing.T) {
	code, stdout, _ := runIn(t, nil, "init", "--help")
	if code != 0 {
		t.Errorf("init --help: exit %d, want 0", code)
	}
	for _, want := range []string{"Usage: pillion init [flags]", "-exclude-outbound-ip-ranges", "-cleanup", "-dry-run", "Examples:"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("init --help does not mention %q:\n%s", want, stdout)
		}
	}
}

// TestInitBadFlags checks that bad flags exit 2, name the flag, and leave
// the namespace's tables alone.
func TestInitBadFlags(t *testing.T) {
	pod := newInitPod(t)
	before := natSaves(t, pod)
	tests := []struct {
		args []string
		want string // first line of stderr
	}{
		{[]string{"--exclude-inbound-ports=80,abc"},
			`pillion init: --exclude-inbound-ports: "80,abc": "abc" is not a port number (1-65535)`},
		{[]string{"--outbound-port=15006"}, `pillion init: --inbound-port: 15006 is also the --outbound-port`},
		{[]string{"--proxy-uid=-1", "--cleanup"}, `pillion init: --proxy-uid: "-1" is not a user ID (1-4294967294)`},
		{[]string{"--include-inbound-ports=8080", "--exclude-inbound-ports=9090"},
			`pillion init: --exclude-inbound-ports: "9090": conflicts with the --include-inbound-ports list "8080"; ` +
				`exclusions apply only when --include-inbound-ports is "*"`},
		{[]string{"--no-such-flag"}, `pillion init: flag provided but not defined: -no-such-flag`},
		{[]string{"extra"}, `pillion init: unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runIn(t, pod, append([]string{"init"}, tt.args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			if first, _, _ := strings.Cut(stderr, "\n"); first != tt.want {
				t.Errorf("stderr starts\n %s\nwant\n %s", first, tt.want)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if diff := cmp.Diff(before, natSaves(t, pod)); diff != "" {
				t.Errorf("tables changed (-before +after):\n%s", diff)
			}
		})
	}
}

func TestInitDryRun(t *testing.T) {
	pod := newInitPod(t)
	before := natSaves(t, pod)
	cfg, err := redirect.DefaultFlags().Config()
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := redirect.NewPlan(cfg, redirect.IPv4), redirect.NewPlan(cfg, redirect.IPv6)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--dry-run"},
			"# Dry run, nothing changed. Once installed, iptables-save -t nat shows:\n" + v4.Save() +
				"# and, where IPv6 is enabled, ip6tables-save -t nat shows:\n" + v6.Save() +
				"# with the inbound sidecar's IPv6 source added first, as by: ip -6 addr add ::6/128 dev lo\n"},
		{[]string{"--dry-run", "--cleanup"},
			"# Dry run, nothing changed. pillion init --cleanup runs these commands, skipping what is\n" +
				"# not installed, and also removes pillion rules and chains an install with other flags left.\n" +
				v4.CleanupScript() + "# IPv6, where IPv6 is enabled:\n" + v6.CleanupScript() +
				"# and, if it is there, the inbound sidecar's IPv6 source is removed: ip -6 addr del ::6/128 dev lo\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runIn(t, pod, append([]string{"init"}, tt.args...)...)
			if code != 0 || stderr != "" {
				t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
			}
			if diff := cmp.Diff(tt.want, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, natSaves(t, pod)); diff != "" {
				t.Errorf("tables changed (-before +after):\n%s", diff)
			}
		})
	}
}

func TestInitInstallCleanup(t *testing.T) {
	pod := newInitPod(t)
	before := natSaves(t, pod)
	steps := []struct {
		args []string
		want string
	}{
		{nil, "IPv4: installed 4 chains and 15 rules\nIPv6: installed 4 chains and 15 rules\n" +
			"IPv6: added ::6/128 to lo (the inbound sidecar's source)\n"},
		{nil, "IPv4: already installed, nothing changed\nIPv6: already installed, nothing changed\n" +
			"IPv6: ::6/128 already on lo, nothing changed\n"},
		{[]string{"--exclude-outbound-ports=22"},
			"IPv4: replaced a different pillion install: removed 4 chains and 15 rules, installed 4 chains and 16 rules\n" +
				"IPv6: replaced a different pillion install: removed 4 chains and 15 rules, installed 4 chains and 16 rules\n" +
				"IPv6: ::6/128 already on lo, nothing changed\n"},
		{[]string{"--cleanup"}, "IPv4: removed 4 chains and 16 rules\nIPv6: removed 4 chains and 16 rules\n" +
			"IPv6: removed ::6/128 from lo\n"},
		{[]string{"--cleanup"}, "IPv4: nothing installed, nothing changed\nIPv6: nothing installed, nothing changed\n"},
	}
	loBefore := loAddrs(t, pod)
	for i, s := range steps {
		code, stdout, stderr := runIn(t, pod, append([]string{"init"}, s.args...)...)
		if code != 0 || stderr != "" {
			t.Fatalf("init %v: exit %d, stderr %q", s.args, code, stderr)
		}
		if stdout != s.want {
			t.Errorf("init %v: stdout\n%s\nwant\n%s", s.args, stdout, s.want)
		}
		// ::6 is on lo while installed (steps 0-2), gone after cleanup.
		if got := strings.Contains(loAddrs(t, pod), "inet6 ::6/128"); got != (i < 3) {
			t.Errorf("after init %v: ::6/128 on lo: %v, want %v:\n%s", s.args, got, i < 3, loAddrs(t, pod))
		}
	}
	if loAfter := loAddrs(t, pod); loAfter != loBefore {
		t.Errorf("lo's addresses after cleanup differ from before:\n%s\nwant\n%s", loAfter, loBefore)
	}
	if diff := cmp.Diff(before, natSaves(t, pod)); diff != "" {
		t.Errorf("tables after cleanup differ from before (-before +after):\n%s", diff)
	}
}

// loAddrs is `ip -o addr show dev lo` in pod, without the lines' lifetimes.
func loAddrs(t *testing.T, pod *testpod.Pod) string {
	t.Helper()
	out, err := pod.Exec(context.Background(), "ip", "-o", "addr", "show", "dev", "lo")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInitIPv6Disabled(t *testing.T) {
	pod := newInitPod(t)
	if _, err := pod.Exec(context.Background(), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runIn(t, pod, "init")
	want := "IPv4: installed 4 chains and 15 rules\nIPv6: disabled in this network namespace, skipped\n"
	if code != 0 || stdout != want {
		t.Errorf("init: exit %d, stdout\n%s\nstderr\n%s\nwant stdout\n%s", code, stdout, stderr, want)
	}
	out, err := pod.Exec(context.Background(), "ip6tables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "PILLION") {
		t.Errorf("IPv6 rules installed although IPv6 is disabled:\n%s", out)
	}
}

// TestInitIPv6ReenabledOnOneInterface: "all" says disabled, but eth0 was
// turned back on; IPv6 must still be captured, or it would escape.
func TestInitIPv6ReenabledOnOneInterface(t *testing.T) {
	pod := newInitPod(t)
	for _, kv := range []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.eth0.disable_ipv6=0"} {
		if _, err := pod.Exec(context.Background(), "sysctl", "-qw", kv); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runIn(t, pod, "init")
	// "all" turned lo's IPv6 off too, and eth0 alone back on.
	want := "IPv4: installed 4 chains and 15 rules\nIPv6: installed 4 chains and 15 rules\n" +
		"IPv6: disabled on lo: ::6 not added (the inbound sidecar cannot reach the application over IPv6)\n"
	if code != 0 || stdout != want {
		t.Errorf("init: exit %d, stdout\n%s\nstderr\n%s\nwant stdout\n%s", code, stdout, stderr, want)
	}
}

// TestInitCleanupAfterIPv6Disabled: rules installed while IPv6 was on are
// removed by --cleanup after it was turned off.
func TestInitCleanupAfterIPv6Disabled(t *testing.T) {
	pod := newInitPod(t)
	before := natSaves(t, pod)
	if code, _, stderr := runIn(t, pod, "init"); code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	if _, err := pod.Exec(context.Background(), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runIn(t, pod, "init", "--cleanup")
	// Turning IPv6 off on lo took ::6 with it: nothing to remove.
	want := "IPv4: removed 4 chains and 15 rules\nIPv6: removed 4 chains and 15 rules\n"
	if code != 0 || stdout != want {
		t.Errorf("init --cleanup: exit %d, stdout\n%s\nstderr\n%s\nwant stdout\n%s", code, stdout, stderr, want)
	}
	if diff := cmp.Diff(before, natSaves(t, pod)); diff != "" {
		t.Errorf("tables after cleanup differ from before (-before +after):\n%s", diff)
	}
}

// TestInitMissingCommand runs init with ip6tables missing from PATH: it must
// name the command, exit 1, and install nothing (not even the IPv4 half).
func TestInitMissingCommand(t *testing.T) {
	pod := newInitPod(t)
	before := natSaves(t, pod)
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(ipt, filepath.Join(dir, "iptables")); err != nil {
		t.Fatal(err)
	}
	oldPath := os.Getenv("PATH")
	os.Setenv("PATH", dir)
	code, _, stderr := runIn(t, pod, "init")
	os.Setenv("PATH", oldPath)

	if code != 1 {
		t.Errorf("exit %d, want 1; stderr:\n%s", code, stderr)
	}
	want := `pillion init: redirect: IPv6 needs the ip6tables command: exec: "ip6tables": executable file not found in $PATH` + "\n"
	if stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
	if diff := cmp.Diff(before, natSaves(t, pod)); diff != "" {
		t.Errorf("tables changed (-before +after):\n%s", diff)
	}
}
