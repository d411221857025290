package redirect

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Ports the sidecar serves itself. Inbound traffic to them is never
// captured, and they can be neither capture ports nor included ports.
const (
	AdminPort      uint16 = 15000 // admin endpoint (loopback only)
	HealthPort     uint16 = 15021 // kubelet readiness
	PrometheusPort uint16 = 15090 // Prometheus scrape
)

// The defaults of the capture ports and the proxy's identity: the user's
// contract (README.md, "Operating the sidecar" and "`pillion init`"), shared
// with `pillion proxy`.
const (
	DefaultOutboundPort uint16 = 15001
	DefaultInboundPort  uint16 = 15006
	DefaultProxyUID     uint32 = 1337
	DefaultProxyGID     uint32 = 1337
)

// sidecarPort is one of the ports the sidecar serves itself.
type sidecarPort struct {
	port uint16
	name string
}

// sidecarPorts lists the fixed ports, in the order their rules appear.
func sidecarPorts() []sidecarPort {
	return []sidecarPort{{AdminPort, "admin"}, {HealthPort, "health"}, {PrometheusPort, "prometheus"}}
}

// maxID is the largest user or group ID; (uid_t)-1 means "no ID" to the
// kernel and iptables' owner match rejects it.
const maxID = 1<<32 - 2

// Flags is the raw, string-typed form of `pillion init`'s flags. The
// injector maps the traffic.pillion.io annotations onto them one to one,
// so their names are a user contract. The zero Flags is not valid (every
// port is empty); start from DefaultFlags or Register.
type Flags struct {
	OutboundPort            string
	InboundPort             string
	ProxyUID                string
	ProxyGID                string
	IncludeInboundPorts     string
	ExcludeInboundPorts     string
	ExcludeOutboundPorts    string
	ExcludeOutboundIPRanges string
	DryRun                  bool
	Cleanup                 bool
}

// DefaultFlags returns the flags as they are when none is given.
func DefaultFlags() Flags {
	var f Flags
	f.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return f
}

// Register defines the flags on fs, with their defaults, storing into f.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.OutboundPort, "outbound-port", strconv.Itoa(int(DefaultOutboundPort)),
		"port the sidecar accepts captured outbound TCP on")
	fs.StringVar(&f.InboundPort, "inbound-port", strconv.Itoa(int(DefaultInboundPort)),
		"port the sidecar accepts captured inbound TCP on")
	fs.StringVar(&f.ProxyUID, "proxy-uid", strconv.FormatUint(uint64(DefaultProxyUID), 10),
		"user ID the sidecar runs as; its traffic is never captured")
	fs.StringVar(&f.ProxyGID, "proxy-gid", strconv.FormatUint(uint64(DefaultProxyGID), 10),
		"group ID the sidecar runs as; its traffic is never captured")
	fs.StringVar(&f.IncludeInboundPorts, "include-inbound-ports", "*",
		`inbound ports to capture: "*" all, "" none, or a comma list `+
			"(annotation traffic.pillion.io/include-inbound-ports)")
	fs.StringVar(&f.ExcludeInboundPorts, "exclude-inbound-ports", "",
		`inbound ports not to capture, comma list or "*"; only with --include-inbound-ports "*" `+
			"(annotation traffic.pillion.io/exclude-inbound-ports)")
	fs.StringVar(&f.ExcludeOutboundPorts, "exclude-outbound-ports", "",
		`outbound destination ports not to capture, comma list or "*" `+
			"(annotation traffic.pillion.io/exclude-outbound-ports)")
	fs.StringVar(&f.ExcludeOutboundIPRanges, "exclude-outbound-ip-ranges", "",
		`outbound destinations not to capture: comma list of CIDRs or IPs, IPv4 and IPv6 mixed, or "*" `+
			"(annotation traffic.pillion.io/exclude-outbound-ip-ranges)")
	fs.BoolVar(&f.DryRun, "dry-run", false,
		"print the rules as iptables-save would show them (with --cleanup: the commands cleanup runs) and change nothing")
	fs.BoolVar(&f.Cleanup, "cleanup", false,
		"remove pillion's chains and rules, whatever flags installed them, and nothing else")
}

// Config is the validated form of Flags. Port and prefix sets are sorted
// and free of duplicates. A Config from Flags.Config is valid; one built
// by hand must follow the same rules to give a sensible Plan.
type Config struct {
	OutboundPort            uint16
	InboundPort             uint16
	ProxyUID                uint32
	ProxyGID                uint32
	IncludeInboundPorts     PortSet
	ExcludeInboundPorts     PortSet
	ExcludeOutboundPorts    PortSet
	ExcludeOutboundIPRanges PrefixSet
	DryRun                  bool
	Cleanup                 bool
}

// PortSet is a set of TCP ports, or every port. The zero PortSet is empty.
type PortSet struct {
	All   bool     // every port; Ports is then nil
	Ports []uint16 // ascending, no duplicates
}

// String renders the set as the flag value it was parsed from: "*", "" or
// a comma list.
func (s PortSet) String() string {
	if s.All {
		return "*"
	}
	items := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		items[i] = strconv.Itoa(int(p))
	}
	return strings.Join(items, ",")
}

// Empty reports whether the set holds no port.
func (s PortSet) Empty() bool { return !s.All && len(s.Ports) == 0 }

// Contains reports whether p is in the set.
func (s PortSet) Contains(p uint16) bool {
	_, found := slices.BinarySearch(s.Ports, p)
	return s.All || found
}

// ParsePortSet parses a port list the way pillion's port flags take it:
// "*" for every port, "" for none, or a comma list of ports (blanks around
// items and duplicates are fine). The error names the offending item.
func ParsePortSet(raw string) (PortSet, error) { return parsePortSet(raw) }

// PrefixSet is a set of address ranges, or every address. The zero
// PrefixSet is empty.
type PrefixSet struct {
	All      bool           // every address; Prefixes is then nil
	Prefixes []netip.Prefix // masked, IPv4 before IPv6, ascending, no duplicates
}

// String renders the set as a flag value: "*", "" or a comma list of CIDRs.
func (s PrefixSet) String() string {
	if s.All {
		return "*"
	}
	items := make([]string, len(s.Prefixes))
	for i, p := range s.Prefixes {
		items[i] = p.String()
	}
	return strings.Join(items, ",")
}

// Config validates f. The error names every flag that is wrong and why,
// one per line, in the form `--flag: "value": reason`.
func (f Flags) Config() (Config, error) {
	c := Config{DryRun: f.DryRun, Cleanup: f.Cleanup}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	c.OutboundPort, err = parseCapturePort("outbound-port", f.OutboundPort)
	check(err)
	c.InboundPort, err = parseCapturePort("inbound-port", f.InboundPort)
	check(err)
	c.ProxyUID, err = ParseID("proxy-uid", "user", f.ProxyUID)
	check(err)
	c.ProxyGID, err = ParseID("proxy-gid", "group", f.ProxyGID)
	check(err)
	c.IncludeInboundPorts, err = listFlag("include-inbound-ports", f.IncludeInboundPorts, parsePortSet)
	check(err)
	c.ExcludeInboundPorts, err = listFlag("exclude-inbound-ports", f.ExcludeInboundPorts, parsePortSet)
	check(err)
	c.ExcludeOutboundPorts, err = listFlag("exclude-outbound-ports", f.ExcludeOutboundPorts, parsePortSet)
	check(err)
	c.ExcludeOutboundIPRanges, err = listFlag("exclude-outbound-ip-ranges", f.ExcludeOutboundIPRanges, parsePrefixSet)
	check(err)
	if len(errs) == 0 {
		errs = append(errs, c.crossCheck(f)...)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// crossCheck finds conflicts between flags that are each valid.
func (c Config) crossCheck(f Flags) []error {
	var errs []error
	if c.InboundPort == c.OutboundPort {
		errs = append(errs, fmt.Errorf("--inbound-port: %d is also the --outbound-port", c.InboundPort))
	}
	for _, p := range c.IncludeInboundPorts.Ports {
		if why := c.reserved(p); why != "" {
			errs = append(errs, fmt.Errorf("--include-inbound-ports: %q: %d is %s and is never captured",
				f.IncludeInboundPorts, p, why))
		}
	}
	included := !c.IncludeInboundPorts.All && !c.IncludeInboundPorts.Empty()
	if included && !c.ExcludeInboundPorts.Empty() {
		errs = append(errs, fmt.Errorf(
			`--exclude-inbound-ports: %q: conflicts with the --include-inbound-ports list %q; exclusions apply only when --include-inbound-ports is "*"`,
			f.ExcludeInboundPorts, f.IncludeInboundPorts))
	}
	return errs
}

// reserved says what p is if the sidecar itself owns it, or "".
func (c Config) reserved(p uint16) string {
	switch p {
	case c.OutboundPort:
		return "the outbound capture port (--outbound-port)"
	case c.InboundPort:
		return "the inbound capture port (--inbound-port)"
	}
	for _, s := range sidecarPorts() {
		if s.port == p {
			return "the sidecar's " + s.name + " port"
		}
	}
	return ""
}

func parseCapturePort(name, raw string) (uint16, error) {
	p, err := parsePort(raw)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", name, err)
	}
	for _, s := range sidecarPorts() {
		if s.port == p {
			return 0, fmt.Errorf("--%s: %d is the sidecar's %s port", name, p, s.name)
		}
	}
	return p, nil
}

// ParseID parses the user or group ID (kind) of flag --name: the proxy's,
// which capture exempts, so never 0.
func ParseID(name, kind, raw string) (uint32, error) {
	s := strings.TrimSpace(raw)
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id > maxID {
		return 0, fmt.Errorf("--%s: %q is not a %s ID (1-%d)", name, s, kind, uint32(maxID))
	}
	if id == 0 {
		return 0, fmt.Errorf("--%s: 0 is root: every process running as root would escape capture", name)
	}
	return uint32(id), nil
}

// listFlag parses a list flag and puts the flag's name and raw value in
// front of an error, so the reason names the offending item.
func listFlag[T any](name, raw string, parse func(string) (T, error)) (T, error) {
	v, err := parse(raw)
	if err != nil {
		return v, fmt.Errorf("--%s: %q: %w", name, raw, err)
	}
	return v, nil
}

func parsePort(raw string) (uint16, error) {
	s := strings.TrimSpace(raw)
	// ParseUint also refuses signs, spaces and the empty string.
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(p), nil
}

// splitList splits a comma list, trimming spaces and dropping empty items.
// It returns all=true for a lone "*"; a "*" among other items is an error.
func splitList(raw string) (items []string, all bool, err error) {
	if strings.TrimSpace(raw) == "*" {
		return nil, true, nil
	}
	for item := range strings.SplitSeq(raw, ",") {
		item = strings.TrimSpace(item)
		switch item {
		case "":
			continue
		case "*":
			return nil, false, errors.New(`"*" must stand alone`)
		}
		items = append(items, item)
	}
	return items, false, nil
}

func parsePortSet(raw string) (PortSet, error) {
	items, all, err := splitList(raw)
	if err != nil || all {
		return PortSet{All: all}, err
	}
	var s PortSet
	for _, item := range items {
		p, err := parsePort(item)
		if err != nil {
			return PortSet{}, err
		}
		s.Ports = append(s.Ports, p)
	}
	slices.Sort(s.Ports)
	s.Ports = slices.Compact(s.Ports)
	return s, nil
}

func parsePrefixSet(raw string) (PrefixSet, error) {
	items, all, err := splitList(raw)
	if err != nil || all {
		return PrefixSet{All: all}, err
	}
	var s PrefixSet
	for _, item := range items {
		p, err := ParsePrefix(item)
		if err != nil {
			return PrefixSet{}, err
		}
		s.Prefixes = append(s.Prefixes, p)
	}
	slices.SortFunc(s.Prefixes, comparePrefix)
	s.Prefixes = slices.Compact(s.Prefixes)
	return s, nil
}

// ParsePrefix parses a CIDR or a bare address (a /32 or /128), masks it,
// and turns IPv4-mapped IPv6 ranges into the IPv4 ranges they stand for:
// a socket connecting to ::ffff:10.0.0.1 sends IPv4 packets, which only an
// IPv4 rule can exclude, and the proxy sees their destination unmapped.
// It is the one parser of the sidecar's address ranges (the exclusions
// here, the config file's mesh networks).
func ParsePrefix(item string) (netip.Prefix, error) {
	var p netip.Prefix
	var err error
	if strings.Contains(item, "/") {
		p, err = netip.ParsePrefix(item)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(item)
		if err == nil && a.Zone() == "" {
			p = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil || !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", item)
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// comparePrefix orders IPv4 before IPv6, then by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := cmp.Compare(a.Addr().BitLen(), b.Addr().BitLen()); c != 0 {
		return c
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
