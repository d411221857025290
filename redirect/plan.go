package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/pillionmesh/pillion/sidecar"
)

// Family is an IP family: which of iptables and ip6tables a Plan is for.
// The zero Family is invalid.
type Family uint8

// The IP families pillion captures.
const (
	IPv4 Family = iota + 1
	IPv6
)

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}

// command is the iptables command of the family.
func (f Family) command() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// loopback is the family's loopback range, as iptables-save prints it.
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1/128"
	}
	return "127.0.0.0/8"
}

// InboundSource returns the local address the inbound sidecar connects to
// the application from, in family f: 127.0.0.6, or ::6 (which `pillion
// init` adds to lo, see AddInboundSource). The capture rules let
// connections from it to the pod's own addresses through uncaptured.
func InboundSource(f Family) netip.Addr {
	if f == IPv6 {
		return netip.AddrFrom16([16]byte{15: 6})
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 6})
}

// InboundSourceFor returns the local address a connection of the sidecar
// to dst, the pod's own address, must come from: InboundSource of dst's
// family (an IPv4-mapped dst is IPv4), which the capture rules let through
// to the application; connecting from any other source, a connection of
// the proxy's UID to its own pod IP is captured back into the inbound
// listener. A loopback dst, which capture never touches, gets the zero
// Addr: the kernel's choice.
func InboundSourceFor(dst netip.Addr) netip.Addr {
	switch dst = dst.Unmap(); {
	case dst.IsLoopback():
		return netip.Addr{}
	case dst.Is4():
		return InboundSource(IPv4)
	}
	return InboundSource(IPv6)
}

// Table is the only table pillion writes to.
const Table = "nat"

// The chains pillion owns. Every chain whose name starts with ChainPrefix
// is pillion's, and Cleanup removes it.
const (
	ChainPrefix      = "PILLION_"
	ChainInbound     = "PILLION_INBOUND"     // decides which inbound TCP is captured
	ChainInRedirect  = "PILLION_IN_REDIRECT" // redirects to the inbound port
	ChainOutput      = "PILLION_OUTPUT"      // decides which outbound TCP is captured
	ChainOutRedirect = "PILLION_REDIRECT"    // redirects to the outbound port
)

// CommentPrefix starts the comment of every rule pillion installs; it is
// how pillion's rules in built-in chains are told from everybody else's.
const CommentPrefix = "pillion: "

// builtinChains are the nat table's built-in chains, in iptables-save order.
func builtinChains() []string {
	return []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
}

// Rule is one rule, in the canonical form iptables-save prints, so that a
// rule read back from the kernel compares equal as text.
type Rule struct {
	Chain   string   // the chain it is appended to
	Match   []string // match arguments, canonical order, without the comment
	Comment string   // purpose, starting with CommentPrefix
	Target  []string // "-j" TARGET and the target's options
}

// Spec returns the rule's arguments as iptables takes them after
// "-A CHAIN": matches, then the comment match, then the target.
func (r Rule) Spec() []string {
	spec := slices.Clone(r.Match)
	spec = append(spec, "-m", "comment", "--comment", r.Comment)
	return append(spec, r.Target...)
}

// String returns the rule as iptables-save and iptables -S print it.
func (r Rule) String() string {
	parts := append([]string{"-A", r.Chain}, r.Match...)
	parts = append(parts, "-m", "comment", "--comment", quote(r.Comment))
	parts = append(parts, r.Target...)
	return strings.Join(parts, " ")
}

// Plan is what pillion installs in one family's nat table: its chains and
// its rules. It is plain data; Apply, Cleanup, Save and CleanupScript
// interpret it.
type Plan struct {
	Family Family
	Chains []string // pillion's chains, in creation order
	// Rules in install order: first the contents of Chains, then the jumps
	// from built-in chains that switch capture on.
	Rules []Rule
}

// NewPlan returns the plan for cfg in family f, which must be IPv4 or IPv6.
// See the package documentation for the layout.
func NewPlan(cfg Config, f Family) Plan {
	if f != IPv4 && f != IPv6 {
		panic("redirect: NewPlan: invalid family " + f.String())
	}
	p := Plan{
		Family: f,
		Chains: []string{ChainInbound, ChainInRedirect, ChainOutput, ChainOutRedirect},
	}
	p.Rules = append(p.Rules, inboundRules(cfg)...)
	p.Rules = append(p.Rules,
		rule(ChainInRedirect, "to the inbound sidecar", tcp(),
			"-j", "REDIRECT", "--to-ports", port(cfg.InboundPort)))
	p.Rules = append(p.Rules, outputRules(cfg, f)...)
	p.Rules = append(p.Rules,
		rule(ChainOutRedirect, "to the outbound sidecar", tcp(),
			"-j", "REDIRECT", "--to-ports", port(cfg.OutboundPort)),
		rule("PREROUTING", "capture inbound", tcp(), "-j", ChainInbound),
		rule("OUTPUT", "capture outbound", tcp(), "-j", ChainOutput),
	)
	return p
}

// inboundRules fills PILLION_INBOUND: the sidecar's own ports are never
// captured; then either every port but the excluded ones, or the included
// ports, or nothing.
func inboundRules(cfg Config) []Rule {
	var rs []Rule
	fixed := map[uint16]bool{}
	for _, s := range sidecar.ServedPorts() {
		fixed[s.Port] = true
		rs = append(rs, rule(ChainInbound, "sidecar "+s.Name+" port", dport(s.Port), "-j", "RETURN"))
	}
	switch inc, exc := cfg.IncludeInboundPorts, cfg.ExcludeInboundPorts; {
	case exc.All || inc.Empty():
		// No inbound capture.
	case inc.All:
		for _, p := range exc.Ports {
			if !fixed[p] {
				rs = append(rs, rule(ChainInbound, "excluded inbound port", dport(p), "-j", "RETURN"))
			}
		}
		rs = append(rs, rule(ChainInbound, "capture remaining inbound", tcp(), "-j", ChainInRedirect))
	default:
		for _, p := range inc.Ports {
			rs = append(rs, rule(ChainInbound, "included inbound port", dport(p), "-j", ChainInRedirect))
		}
	}
	return rs
}

// outputRules fills PILLION_OUTPUT. See the package documentation.
func outputRules(cfg Config, f Family) []Rule {
	lo := f.loopback()
	uid := strconv.FormatUint(uint64(cfg.ProxyUID), 10)
	gid := strconv.FormatUint(uint64(cfg.ProxyGID), 10)
	src := netip.PrefixFrom(InboundSource(f), InboundSource(f).BitLen()).String()
	rs := []Rule{
		rule(ChainOutput, "inbound sidecar to the app on the pod IP not captured",
			[]string{"-s", src, "-o", "lo"}, "-j", "RETURN"),
		rule(ChainOutput, "proxy uid to own pod IP is inbound",
			[]string{"!", "-d", lo, "-o", "lo", "-m", "owner", "--uid-owner", uid}, "-j", ChainInbound),
		rule(ChainOutput, "proxy uid not captured",
			[]string{"-m", "owner", "--uid-owner", uid}, "-j", "RETURN"),
		rule(ChainOutput, "proxy gid to own pod IP is inbound",
			[]string{"!", "-d", lo, "-o", "lo", "-m", "owner", "--gid-owner", gid}, "-j", ChainInbound),
		rule(ChainOutput, "proxy gid not captured",
			[]string{"-m", "owner", "--gid-owner", gid}, "-j", "RETURN"),
		rule(ChainOutput, "loopback not captured", []string{"-d", lo}, "-j", "RETURN"),
	}
	if cfg.ExcludeOutboundIPRanges.All || cfg.ExcludeOutboundPorts.All {
		return rs // no outbound capture
	}
	for _, p := range cfg.ExcludeOutboundIPRanges.Prefixes {
		if familyOf(p) == f {
			rs = append(rs, rule(ChainOutput, "excluded outbound range", []string{"-d", p.String()}, "-j", "RETURN"))
		}
	}
	for _, p := range cfg.ExcludeOutboundPorts.Ports {
		rs = append(rs, rule(ChainOutput, "excluded outbound port", dport(p), "-j", "RETURN"))
	}
	return append(rs, rule(ChainOutput, "capture remaining outbound", nil, "-j", ChainOutRedirect))
}

func rule(chain, purpose string, match []string, target ...string) Rule {
	return Rule{Chain: chain, Match: match, Comment: CommentPrefix + purpose, Target: target}
}

func tcp() []string { return []string{"-p", "tcp"} }

func dport(p uint16) []string { return []string{"-p", "tcp", "-m", "tcp", "--dport", port(p)} }

func port(p uint16) string { return strconv.Itoa(int(p)) }

func familyOf(p netip.Prefix) Family {
	if p.Addr().Is4() {
		return IPv4
	}
	return IPv6
}

// owns reports whether chain is one of p's chains.
func (p Plan) owns(chain string) bool { return slices.Contains(p.Chains, chain) }

// hookedChains returns the built-in chains p adds rules to, in the order
// of p's rules.
func (p Plan) hookedChains() []string {
	var out []string
	for _, r := range p.Rules {
		if !p.owns(r.Chain) && !slices.Contains(out, r.Chain) {
			out = append(out, r.Chain)
		}
	}
	return out
}

// Save renders p as `iptables-save -t nat` (or ip6tables-save) prints the
// nat table of an otherwise empty namespace once p is installed, without
// the "#" comment lines: the built-in chains with policy ACCEPT, pillion's
// chains (sorted, as iptables-nft-save sorts them), then every chain's
// rules in that chain order. Compare it with NormalizeSave's output.
func (p Plan) Save() string {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	for _, c := range builtinChains() {
		fmt.Fprintf(&b, ":%s ACCEPT [0:0]\n", c)
	}
	chains := slices.Sorted(slices.Values(p.Chains))
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range append(builtinChains(), chains...) {
		for _, r := range p.Rules {
			if r.Chain == c {
				b.WriteString(r.String() + "\n")
			}
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// CleanupScript returns, one per line, the iptables (or ip6tables)
// commands that Cleanup runs to remove an install of p: the jumps from
// built-in chains first, then pillion's chains are flushed and deleted.
// Cleanup skips what is not there, and also removes pillion rules and
// chains that an install with other flags left (see Cleanup).
func (p Plan) CleanupScript() string {
	var b strings.Builder
	cmd := p.Family.command() + " -t " + Table
	for _, r := range slices.Backward(p.Rules) {
		if !p.owns(r.Chain) {
			b.WriteString(cmd + " " + strings.Replace(r.String(), "-A", "-D", 1) + "\n")
		}
	}
	for _, c := range p.Chains {
		fmt.Fprintf(&b, "%s -F %s\n", cmd, c)
	}
	for _, c := range p.Chains {
		fmt.Fprintf(&b, "%s -X %s\n", cmd, c)
	}
	return b.String()
}
