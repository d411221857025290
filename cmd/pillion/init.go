package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/pillionmesh/pillion/redirect"
)

const initSummary = `Install the iptables rules that send this network namespace's TCP traffic
through the sidecar: inbound TCP to --inbound-port, outbound TCP to
--outbound-port, except the sidecar's own traffic (--proxy-uid/--proxy-gid),
localhost, the sidecar's ports 15000, 15021 and 15090, what the exclusion
flags name, and the inbound sidecar's connections to the application (from
127.0.0.6 or ::6 to the pod's own IP). It runs once, as the pod's init
container (it needs NET_ADMIN and NET_RAW), in the pod's network namespace,
and acts only on that namespace's nat table (and lo, below): chains
PILLION_INBOUND, PILLION_IN_REDIRECT, PILLION_OUTPUT, PILLION_REDIRECT and
one rule each in PREROUTING and OUTPUT, every rule commented "pillion: ...".
Other rules are never touched.

IPv4 goes through iptables. IPv6 goes through ip6tables whenever IPv6 is
enabled in the namespace (net.ipv6.conf.all.disable_ipv6 = 0), with or
without an address, so no IPv6 traffic escapes capture; ip6tables must then
be installed. With IPv6, ::6/128 is also added to lo (127.0.0.6 is local
already): the inbound sidecar connects to the application from it.

Running it again with the same flags changes nothing. With other flags it
replaces pillion's rules. If any step fails, everything this run changed is
undone (both families) and it exits 1. Bad flags exit 2 before anything is
touched.

--cleanup removes pillion's chains and rules, whatever flags installed them,
and ::6 from lo.
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

	if cfg.Cleanup {
		reports, err := redirect.Cleanup(ctx, targets...)
		if err != nil {
			return err
		}
		printReports(stdout, reports)
		if removed, err := redirect.RemoveInboundSource(); err != nil {
			return err
		} else if removed {
			fmt.Fprintf(stdout, "IPv6: removed %s/128 from lo\n", redirect.InboundSource(redirect.IPv6))
		}
		if !v6 {
			fmt.Fprintln(stdout, "IPv6: disabled in this network namespace, skipped")
		}
		return nil
	}

	// The inbound sidecar's IPv6 source goes first, so that the rules
	// never hold without it; a failed install takes it away again.
	var addedMsg strings.Builder
	added, err := addInboundSource(&addedMsg, v6)
	if err != nil {
		return err
	}
	reports, err := redirect.Apply(ctx, targets...)
	if err != nil {
		if added {
			if _, rerr := redirect.RemoveInboundSource(); rerr != nil {
				err = fmt.Errorf("%w; and undoing it: %w", err, rerr)
			}
		}
		return err
	}
	printReports(stdout, reports)
	fmt.Fprint(stdout, addedMsg.String())
	if !v6 {
		fmt.Fprintln(stdout, "IPv6: disabled in this network namespace, skipped")
	}
	return nil
}

// addInboundSource adds ::6 to lo where IPv6 is enabled (v6), for the
// inbound sidecar to reach the application from it, and says so on w.
// added is false when nothing changed.
func addInboundSource(w io.Writer, v6 bool) (added bool, err error) {
	if !v6 {
		return false, nil
	}
	src := redirect.InboundSource(redirect.IPv6)
	onLo, err := redirect.LoopbackIPv6Enabled()
	if err != nil {
		return false, err
	}
	if !onLo {
		fmt.Fprintf(w, "IPv6: disabled on lo: %s not added (the inbound sidecar cannot reach the application over IPv6)\n", src)
		return false, nil
	}
	added, err = redirect.AddInboundSource()
	if err != nil {
		return false, err
	}
	if added {
		fmt.Fprintf(w, "IPv6: added %s/128 to lo (the inbound sidecar's source)\n", src)
	} else {
		fmt.Fprintf(w, "IPv6: %s/128 already on lo, nothing changed\n", src)
	}
	return added, nil
}

func printReports(w io.Writer, reports []redirect.Report) {
	for _, r := range reports {
		fmt.Fprintln(w, r)
	}
}

func printDryRun(w io.Writer, cfg redirect.Config) {
	v4, v6 := redirect.NewPlan(cfg, redirect.IPv4), redirect.NewPlan(cfg, redirect.IPv6)
	if cfg.Cleanup {
		fmt.Fprintln(w, "# Dry run, nothing changed. pillion init --cleanup runs these commands, skipping what is")
		fmt.Fprintln(w, "# not installed, and also removes pillion rules and chains an install with other flags left.")
		fmt.Fprint(w, v4.CleanupScript())
		fmt.Fprintln(w, "# IPv6, where IPv6 is enabled:")
		fmt.Fprint(w, v6.CleanupScript())
		fmt.Fprintf(w, "# and, if it is there, the inbound sidecar's IPv6 source is removed: ip -6 addr del %s/128 dev lo\n",
			redirect.InboundSource(redirect.IPv6))
		return
	}
	fmt.Fprintln(w, "# Dry run, nothing changed. Once installed, iptables-save -t nat shows:")
	fmt.Fprint(w, v4.Save())
	fmt.Fprintln(w, "# and, where IPv6 is enabled, ip6tables-save -t nat shows:")
	fmt.Fprint(w, v6.Save())
	fmt.Fprintf(w, "# with the inbound sidecar's IPv6 source added first, as by: ip -6 addr add %s/128 dev lo\n",
		redirect.InboundSource(redirect.IPv6))
}
