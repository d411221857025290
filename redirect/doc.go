// Package redirect captures a pod's TCP traffic for the sidecar with
// iptables: it turns `pillion init`'s flags into a validated Config, the
// Config into a Plan (plain data: chains and rules, per IP family), and
// applies, removes or renders that Plan.
//
// # Layout
//
// Everything lives in the nat table, in four chains, laid out like
// istio-iptables:
//
//	PREROUTING   -p tcp -j PILLION_INBOUND
//	OUTPUT       -p tcp -j PILLION_OUTPUT
//
//	PILLION_INBOUND
//	  -p tcp --dport 15000|15021|15090 -j RETURN   the sidecar's own ports
//	  -p tcp --dport <excluded> -j RETURN          --exclude-inbound-ports
//	  -p tcp [--dport <included>] -j PILLION_IN_REDIRECT
//	PILLION_IN_REDIRECT
//	  -p tcp -j REDIRECT --to-ports 15006
//
//	PILLION_OUTPUT
//	  1 ! -d <loopback> -o lo -m owner --uid-owner 1337 -j PILLION_INBOUND
//	  2 -m owner --uid-owner 1337 -j RETURN
//	  3 ! -d <loopback> -o lo -m owner --gid-owner 1337 -j PILLION_INBOUND
//	  4 -m owner --gid-owner 1337 -j RETURN
//	  5 -d <loopback> -j RETURN
//	  6 -d <excluded range> -j RETURN              --exclude-outbound-ip-ranges
//	  7 -p tcp --dport <excluded> -j RETURN        --exclude-outbound-ports
//	  8 -j PILLION_REDIRECT
//	PILLION_REDIRECT
//	  -p tcp -j REDIRECT --to-ports 15001
//
// The loopback range is 127.0.0.0/8 for IPv4 and ::1/128 for IPv6; IPv6
// gets the same plan through ip6tables, with the IPv6 excluded ranges.
// Every rule carries a comment starting "pillion: " that names its purpose;
// in the built-in chains that comment is how pillion tells its rules from
// everybody else's.
//
// # Why loopback is handled this way
//
// The sidecar's own traffic (rules 2 and 4) and traffic to localhost (rule
// 5) are never captured: the proxy must reach the world and the app on
// 127.0.0.1, and the app talking to itself on localhost is none of the
// mesh's business.
//
// Unlike istio-iptables, an application that calls its own pod IP is not
// let through on lo: it is captured like any outbound call, so outbound
// policy applies. The outbound sidecar then dials the pod IP as uid 1337;
// that connection leaves through lo to a non-loopback address, so rules 1
// and 3 send it to PILLION_INBOUND (not straight to PILLION_IN_REDIRECT,
// so inbound exclusions still hold) and the inbound sidecar handles it
// like any other inbound call, with inbound policy. Nothing loops: the
// inbound sidecar reaches the app on 127.0.0.1, which rule 2 lets through.
//
// # Switches
//
// With --include-inbound-ports "" or --exclude-inbound-ports "*",
// PILLION_INBOUND holds only the sidecar-port rules: no inbound capture.
// With --exclude-outbound-ip-ranges "*" or --exclude-outbound-ports "*",
// PILLION_OUTPUT stops after rule 5: no outbound capture, but the proxy's
// calls to its own pod IP still go through inbound handling. The four
// chains and the two hooks are always there, so what Cleanup removes does
// not depend on flags.
//
// # Applying
//
// Apply is idempotent and all or nothing (see Apply); Cleanup is its
// inverse. Plan.Save renders a plan as iptables-save prints it, which is
// what `pillion init --dry-run` shows and what the kernel tests compare
// the real tables with.
package redirect
