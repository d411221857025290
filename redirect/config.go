package redirect

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/pillionmesh/pillion/sidecar"
)

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
	fs.StringVar(&f.OutboundPort, "outbound-port", strconv.Itoa(int(sidecar.DefaultOutboundPort)),
		"port the sidecar accepts captured outbound TCP on")
	fs.StringVar(&f.InboundPort, "inbound-port", strconv.Itoa(int(sidecar.DefaultInboundPort)),
		"port the sidecar accepts captured inbound TCP on")
	fs.StringVar(&f.ProxyUID, "proxy-uid", strconv.FormatUint(uint64(sidecar.DefaultProxyUID), 10),
		"user ID the sidecar runs as; its traffic is never captured")
	fs.StringVar(&f.ProxyGID, "proxy-gid", strconv.FormatUint(uint64(sidecar.DefaultProxyGID), 10),
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
	IncludeInboundPorts     sidecar.PortSet
	ExcludeInboundPorts     sidecar.PortSet
	ExcludeOutboundPorts    sidecar.PortSet
	ExcludeOutboundIPRanges sidecar.PrefixSet
	DryRun                  bool
	Cleanup                 bool
}

// Config validates f. The error names every flag that is wrong and why,
// one per line, in the form `--flag: "value": reason`.
func (f Flags) Config() (Config, error) {
	return f.ConfigNamed(func(flag string) string { return "--" + flag })
}

// ConfigNamed is Config for a caller whose user set the flags under other
// names (the injector's annotations): name gives what to call each flag,
// from its name without dashes ("exclude-inbound-ports"), in the errors.
func (f Flags) ConfigNamed(name func(flag string) string) (Config, error) {
	c := Config{DryRun: f.DryRun, Cleanup: f.Cleanup}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	c.OutboundPort, err = parseCapturePort(name("outbound-port"), f.OutboundPort)
	check(err)
	c.InboundPort, err = parseCapturePort(name("inbound-port"), f.InboundPort)
	check(err)
	c.ProxyUID, err = ParseID(name("proxy-uid"), "user", f.ProxyUID)
	check(err)
	c.ProxyGID, err = ParseID(name("proxy-gid"), "group", f.ProxyGID)
	check(err)
	c.IncludeInboundPorts, err = listFlag(name("include-inbound-ports"), f.IncludeInboundPorts, sidecar.ParsePortSet)
	check(err)
	c.ExcludeInboundPorts, err = listFlag(name("exclude-inbound-ports"), f.ExcludeInboundPorts, sidecar.ParsePortSet)
	check(err)
	c.ExcludeOutboundPorts, err = listFlag(name("exclude-outbound-ports"), f.ExcludeOutboundPorts, sidecar.ParsePortSet)
	check(err)
	c.ExcludeOutboundIPRanges, err = listFlag(name("exclude-outbound-ip-ranges"), f.ExcludeOutboundIPRanges, sidecar.ParsePrefixSet)
	check(err)
	if len(errs) == 0 {
		errs = append(errs, c.crossCheck(f, name)...)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// crossCheck finds conflicts between flags that are each valid; name
// names them.
func (c Config) crossCheck(f Flags, name func(string) string) []error {
	var errs []error
	if c.InboundPort == c.OutboundPort {
		errs = append(errs, fmt.Errorf("%s: %d is also the %s", name("inbound-port"), c.InboundPort, name("outbound-port")))
	}
	for _, p := range c.IncludeInboundPorts.Ports {
		if why := c.reserved(p, name); why != "" {
			errs = append(errs, fmt.Errorf("%s: %q: %d is %s and is never captured",
				name("include-inbound-ports"), f.IncludeInboundPorts, p, why))
		}
	}
	included := !c.IncludeInboundPorts.All && !c.IncludeInboundPorts.Empty()
	if included && !c.ExcludeInboundPorts.Empty() {
		include := name("include-inbound-ports")
		errs = append(errs, fmt.Errorf(
			`%s: %q: conflicts with the %s list %q; exclusions apply only when %s is "*"`,
			name("exclude-inbound-ports"), f.ExcludeInboundPorts, include, f.IncludeInboundPorts, include))
	}
	return errs
}

// reserved says what p is if the sidecar itself owns it, or "".
func (c Config) reserved(p uint16, name func(string) string) string {
	switch p {
	case c.OutboundPort:
		return "the outbound capture port (" + name("outbound-port") + ")"
	case c.InboundPort:
		return "the inbound capture port (" + name("inbound-port") + ")"
	}
	for _, s := range sidecar.ServedPorts() {
		if s.Port == p {
			return "the sidecar's " + s.Name + " port"
		}
	}
	return ""
}

// parseCapturePort parses the capture port the user calls name.
func parseCapturePort(name, raw string) (uint16, error) {
	p, err := sidecar.ParsePort(raw)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	for _, s := range sidecar.ServedPorts() {
		if s.Port == p {
			return 0, fmt.Errorf("%s: %d is the sidecar's %s port", name, p, s.Name)
		}
	}
	return p, nil
}

// ParseID parses the user or group ID (kind) that the user calls name
// ("--proxy-uid"): the proxy's, which capture exempts, so never 0.
func ParseID(name, kind, raw string) (uint32, error) {
	s := strings.TrimSpace(raw)
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id > maxID {
		return 0, fmt.Errorf("%s: %q is not a %s ID (1-%d)", name, s, kind, uint32(maxID))
	}
	if id == 0 {
		return 0, fmt.Errorf("%s: 0 is root: every process running as root would escape capture", name)
	}
	return uint32(id), nil
}

// listFlag parses a list the user calls name and puts that name and the
// raw value in front of an error, so the reason names the offending item.
func listFlag[T any](name, raw string, parse func(string) (T, error)) (T, error) {
	v, err := parse(raw)
	if err != nil {
		return v, fmt.Errorf("%s: %q: %w", name, raw, err)
	}
	return v, nil
}
