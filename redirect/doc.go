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
//	  0 -s <inbound source> -o lo -j RETURN
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
// The loopback range is 127.0.0.0/8 for IPv4 and ::1/128 for IPv6, the
// inbound source (InboundSource) 127.0.0.6/32 and ::6/128; IPv6 gets the
// same plan through ip6tables, with the IPv6 excluded ranges.
// Every rule carries a comment starting "pillion: " that names its purpose;
// in the built-in chains that comment is how pillion tells its rules from
// everybody else's.
//
// # Why loopback is handled this way
//
// The sidecar's own traffic (rules 2 and 4) and traffic to localhost (rule
// 5) are never captured: the proxy must reach the world, and the app
// talking to itself on localhost is none of the mesh's business.
//
// Unlike istio-iptables, an application that calls its own pod IP is not
// let through on lo: it is captured like any outbound call, so outbound
// policy applies. The outbound sidecar then dials the pod IP as uid 1337;
// that connection leaves through lo to a non-loopback address, so rules 1
// and 3 send it to PILLION_INBOUND (not straight to PILLION_IN_REDIRECT,
// so inbound exclusions still hold) and the inbound sidecar handles it
// like any other inbound call, with inbound policy.
//
// The inbound sidecar delivers each connection to the application at its
// original destination, the pod's own IP and port, from 127.0.0.6 (::6),
// as Istio does since 1.10: a listener bound to localhost only stays
// private to the pod, and one bound to the pod IP is reached. That
// connection too leaves through lo to the pod IP as uid 1337, so rule 0
// must come before rule 1: without it the delivery would be sent back to
// the inbound sidecar, forever. Rule 0 matches on the source address
// alone, as Istio's does: it applies only to connections from this pod to
// itself (-o lo), so an application that binds 127.0.0.6 to call its own
// pod IP only reaches its own listeners without its sidecars, as it can
// on localhost; no other pod is reached that way. Nothing is needed on
// the way in: the connection's first packet is NATed (here: left alone)
// in OUTPUT, and when it comes back in through lo it is no longer new to
// conntrack, so nat PREROUTING never sees it. IPv6 needs ::6 to be an
// address of lo, which it is not by default: AddInboundSource adds it.
//
// # Switches
//
// With --include-inbound-ports "" or --exclude-inbound-ports "*",
// PILLION_INBOUND holds only the sidecar-port rules: no inbound capture.
// With --exclude-outbound-ip-ranges "*" or --exclude-outbound-ports "*",
// PILLION_OUTPUT stops after rule 5: no outbound capture, but the proxy's
// calls to its own pod IP still go through inbound handling. Rule 0 is
// always there and always first, so no excluded range or port (an excluded
// range holding the pod IP, say) changes how the inbound sidecar reaches
// the application; inbound exclusions only decide what reaches the
// inbound sidecar. The four chains and the two hooks are always there, so
// what Cleanup removes does not depend on flags.
//
// # Applying
//
// Apply is idempotent and all or nothing (see Apply); Cleanup is its
// inverse. Plan.Save renders a plan as iptables-save prints it, which is
// what `pillion init --dry-run` shows and what the kernel tests compare
// the real tables with.
package redirect
