package main

import (
	"context"
	"fmt"
	"io"

	"github.com/pillionmesh/pillion/redirect"
)

const initSummary = `Install the iptables rules that send this network namespace's TCP traffic
through the sidecar: inbound TCP to --inbound-port, outbound TCP to
--outbound-port, except the sidecar's own traffic (--proxy-uid/--proxy-gid),
localhost, the sidecar's ports 15000, 15021 and 15090, and what the
exclusion flags name. It runs once, as the pod's init container (it needs
NET_ADMIN and NET_RAW), in the pod's network namespace, and acts only on that
namespace's nat table: chains PILLION_INBOUND, PILLION_IN_REDIRECT,
PILLION_OUTPUT, PILLION_REDIRECT and one rule each in PREROUTING and OUTPUT,
every rule commented "pillion: ...". Other rules are never touched.

IPv4 goes through iptables. IPv6 goes through ip6tables whenever IPv6 is
enabled in the namespace (net.ipv6.conf.all.disable_ipv6 = 0), with or
without an address, so no IPv6 traffic escapes capture; ip6tables must then
be installed.

Running it again with the same flags changes nothing. With other flags it
replaces pillion's rules. If any step fails, everything this run changed is
undone (both families) and it exits 1. Bad flags exit 2 before anything is
touched.

--cleanup removes pillion's chains and rules, whatever flags installed them.
--dry-run changes nothing and reads nothing: it prints the rules as
iptables-save -t nat will show them, or with --cleanup the commands cleanup
runs.

Examples:
  pillion init
  pillion init --exclude-inbound-ports=22 --exclude-outbound-ip-ranges=169.254.169.254,fd00::/8
  pillion init --include-inbound-ports=8080,9090 --dry-run
  pillion init --cleanup`

// runInit is `pillion init`: it validates the flags, then installs,
// removes (--cleanup) or prints (--dry-run) the capture rules.
func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("init", initSummary, stdout)
	var flags redirect.Flags
	flags.Register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := flags.Config()
	if err != nil {
		return badUsage(err)
	}
	if cfg.DryRun {
		printDryRun(stdout, cfg)
		return nil
	}

	fams := []redirect.Family{redirect.IPv4}
	v6, err := redirect.IPv6Enabled()
	if err != nil {
		return err
	}
	if v6 {
		fams = append(fams, redirect.IPv6)
	}
	var targets []redirect.Target
	for _, f := range fams {
		t, err := redirect.NewTables(f)
		if err != nil {
			return err
		}
		targets = append(targets, redirect.Target{Plan: redirect.NewPlan(cfg, f), Tables: t})
	}
	if cfg.Cleanup && !v6 {
		// IPv6 may have been enabled when the rules went in: remove them
		// whenever ip6tables can, even though IPv6 is off now.
		if t, err := redirect.NewTables(redirect.IPv6); err == nil {
			targets = append(targets, redirect.Target{Plan: redirect.NewPlan(cfg, redirect.IPv6), Tables: t})
			v6 = true
		}
	}

	op := redirect.Apply
	if cfg.Cleanup {
		op = redirect.Cleanup
	}
	reports, err := op(ctx, targets...)
	if err != nil {
		return err
	}
	for _, r := range reports {
		fmt.Fprintln(stdout, r)
	}
	if !v6 {
		fmt.Fprintln(stdout, "IPv6: disabled in this network namespace, skipped")
	}
	return nil
}

func printDryRun(w io.Writer, cfg redirect.Config) {
	v4, v6 := redirect.NewPlan(cfg, redirect.IPv4), redirect.NewPlan(cfg, redirect.IPv6)
	if cfg.Cleanup {
		fmt.Fprintln(w, "# Dry run, nothing changed. pillion init --cleanup runs these commands, skipping what is")
		fmt.Fprintln(w, "# not installed, and also removes pillion rules and chains an install with other flags left.")
		fmt.Fprint(w, v4.CleanupScript())
		fmt.Fprintln(w, "# IPv6, where IPv6 is enabled:")
		fmt.Fprint(w, v6.CleanupScript())
		return
	}
	fmt.Fprintln(w, "# Dry run, nothing changed. Once installed, iptables-save -t nat shows:")
	fmt.Fprint(w, v4.Save())
	fmt.Fprintln(w, "# and, where IPv6 is enabled, ip6tables-save -t nat shows:")
	fmt.Fprint(w, v6.Save())
}
