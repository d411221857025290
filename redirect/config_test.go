package redirect

import (
	"flag"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pillionmesh/pillion/sidecar"
)

// comparePrefixes lets cmp compare netip values, which have unexported fields.
func comparePrefixes() cmp.Option { return cmpopts.EquateComparable(netip.Prefix{}) }

func defaultConfig() Config {
	return Config{
		OutboundPort:        15001,
		InboundPort:         15006,
		ProxyUID:            1337,
		ProxyGID:            1337,
		IncludeInboundPorts: sidecar.PortSet{All: true},
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestFlagsRegister(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var f Flags
	f.Register(fs)
	err := fs.Parse([]string{
		"--outbound-port=1", "--inbound-port=2", "--proxy-uid=3", "--proxy-gid=4",
		"--include-inbound-ports=5", "--exclude-inbound-ports=", "--exclude-outbound-ports=7",
		"--exclude-outbound-ip-ranges=10.0.0.0/8", "--dry-run", "--cleanup",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Flags{"1", "2", "3", "4", "5", "", "7", "10.0.0.0/8", true, true}
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("flags (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Flags{"15001", "15006", "1337", "1337", "*", "", "", "", false, false}, DefaultFlags()); diff != "" {
		t.Errorf("DefaultFlags (-want +got):\n%s", diff)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Flags)
		want func(*Config)
	}{
		{"defaults", func(*Flags) {}, func(*Config) {}},
		{
			"custom ports and ids",
			func(f *Flags) {
				f.OutboundPort, f.InboundPort, f.ProxyUID, f.ProxyGID = " 7001", "7006 ", "1", "4294967294"
			},
			func(c *Config) { c.OutboundPort, c.InboundPort, c.ProxyUID, c.ProxyGID = 7001, 7006, 1, 4294967294 },
		},
		{
			"lists are trimmed, sorted and deduplicated",
			func(f *Flags) {
				f.ExcludeInboundPorts = " 443 , 80,443,,8080, "
				f.ExcludeOutboundPorts = "65535,1"
			},
			func(c *Config) {
				c.ExcludeInboundPorts = sidecar.PortSet{Ports: []uint16{80, 443, 8080}}
				c.ExcludeOutboundPorts = sidecar.PortSet{Ports: []uint16{1, 65535}}
			},
		},
		{
			"include list",
			func(f *Flags) { f.IncludeInboundPorts = "9090,8080" },
			func(c *Config) { c.IncludeInboundPorts = sidecar.PortSet{Ports: []uint16{8080, 9090}} },
		},
		{
			"include none, exclusions then mean nothing but are allowed",
			func(f *Flags) { f.IncludeInboundPorts, f.ExcludeInboundPorts = " ", "80" },
			func(c *Config) {
				c.IncludeInboundPorts = sidecar.PortSet{}
				c.ExcludeInboundPorts = sidecar.PortSet{Ports: []uint16{80}}
			},
		},
		{
			"stars",
			func(f *Flags) {
				f.ExcludeInboundPorts, f.ExcludeOutboundPorts, f.ExcludeOutboundIPRanges = " * ", "*", "*"
			},
			func(c *Config) {
				c.ExcludeInboundPorts = sidecar.PortSet{All: true}
				c.ExcludeOutboundPorts = sidecar.PortSet{All: true}
				c.ExcludeOutboundIPRanges = sidecar.PrefixSet{All: true}
			},
		},
		{
			"ranges: masked, bare IPs, mapped IPv4 unmapped, v4 first",
			func(f *Flags) {
				f.ExcludeOutboundIPRanges = "2001:db8::1, 10.1.2.3/8, 192.168.0.1,::ffff:172.16.0.0/108,10.0.0.0/8,2001:db8::/32"
			},
			func(c *Config) {
				c.ExcludeOutboundIPRanges = sidecar.PrefixSet{Prefixes: prefixes(
					"10.0.0.0/8", "172.16.0.0/12", "192.168.0.1/32", "2001:db8::/32", "2001:db8::1/128")}
			},
		},
		{
			"capture ports may be excluded (it changes nothing)",
			func(f *Flags) { f.ExcludeInboundPorts, f.ExcludeOutboundPorts = "15006,15000", "15001" },
			func(c *Config) {
				c.ExcludeInboundPorts = sidecar.PortSet{Ports: []uint16{15000, 15006}}
				c.ExcludeOutboundPorts = sidecar.PortSet{Ports: []uint16{15001}}
			},
		},
		{
			"dry run with cleanup",
			func(f *Flags) { f.DryRun, f.Cleanup = true, true },
			func(c *Config) { c.DryRun, c.Cleanup = true, true },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := DefaultFlags()
			tt.edit(&f)
			want := defaultConfig()
			tt.want(&want)
			got, err := f.Config()
			if err != nil {
				t.Fatalf("Config: %v", err)
			}
			if diff := cmp.Diff(want, got, comparePrefixes()); diff != "" {
				t.Errorf("Config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Flags)
		want string
	}{
		{"port not a number", func(f *Flags) { f.OutboundPort = "abc" },
			`--outbound-port: "abc" is not a port number (1-65535)`},
		{"port zero", func(f *Flags) { f.InboundPort = "0" },
			`--inbound-port: "0" is not a port number (1-65535)`},
		{"port too big", func(f *Flags) { f.InboundPort = "65536" },
			`--inbound-port: "65536" is not a port number (1-65535)`},
		{"port negative", func(f *Flags) { f.OutboundPort = "-1" },
			`--outbound-port: "-1" is not a port number (1-65535)`},
		{"port empty", func(f *Flags) { f.OutboundPort = " " },
			`--outbound-port: "" is not a port number (1-65535)`},
		{"capture port is a sidecar port", func(f *Flags) { f.InboundPort = "15021" },
			`--inbound-port: 15021 is the sidecar's health port`},
		{"capture ports equal", func(f *Flags) { f.InboundPort = "15001" },
			`--inbound-port: 15001 is also the --outbound-port`},
		{"uid not a number", func(f *Flags) { f.ProxyUID = "nobody" },
			`--proxy-uid: "nobody" is not a user ID (1-4294967294)`},
		{"uid negative", func(f *Flags) { f.ProxyUID = "-1" },
			`--proxy-uid: "-1" is not a user ID (1-4294967294)`},
		{"uid is (uid_t)-1", func(f *Flags) { f.ProxyUID = "4294967295" },
			`--proxy-uid: "4294967295" is not a user ID (1-4294967294)`},
		{"uid root", func(f *Flags) { f.ProxyUID = "0" },
			`--proxy-uid: 0 is root: every process running as root would escape capture`},
		{"gid not a number", func(f *Flags) { f.ProxyGID = "1.5" },
			`--proxy-gid: "1.5" is not a group ID (1-4294967294)`},
		{"list item not a port", func(f *Flags) { f.ExcludeInboundPorts = "80,abc" },
			`--exclude-inbound-ports: "80,abc": "abc" is not a port number (1-65535)`},
		{"list item zero", func(f *Flags) { f.ExcludeOutboundPorts = "0" },
			`--exclude-outbound-ports: "0": "0" is not a port number (1-65535)`},
		{"list item too big", func(f *Flags) { f.IncludeInboundPorts = "8080, 70000" },
			`--include-inbound-ports: "8080, 70000": "70000" is not a port number (1-65535)`},
		{"port range is not a port", func(f *Flags) { f.ExcludeOutboundPorts = "80-90" },
			`--exclude-outbound-ports: "80-90": "80-90" is not a port number (1-65535)`},
		{"star among ports", func(f *Flags) { f.ExcludeOutboundPorts = "80,*" },
			`--exclude-outbound-ports: "80,*": "*" must stand alone`},
		{"bad CIDR", func(f *Flags) { f.ExcludeOutboundIPRanges = "10.0.0.0/33" },
			`--exclude-outbound-ip-ranges: "10.0.0.0/33": "10.0.0.0/33" is not an IP address or CIDR`},
		{"not an IP", func(f *Flags) { f.ExcludeOutboundIPRanges = "10.0.0.0/8, example.com" },
			`--exclude-outbound-ip-ranges: "10.0.0.0/8, example.com": "example.com" is not an IP address or CIDR`},
		{"zoned IP", func(f *Flags) { f.ExcludeOutboundIPRanges = "fe80::1%eth0" },
			`--exclude-outbound-ip-ranges: "fe80::1%eth0": "fe80::1%eth0" is not an IP address or CIDR`},
		{"star among ranges", func(f *Flags) { f.ExcludeOutboundIPRanges = "*,10.0.0.0/8" },
			`--exclude-outbound-ip-ranges: "*,10.0.0.0/8": "*" must stand alone`},
		{"include names the admin port", func(f *Flags) { f.IncludeInboundPorts = "8080,15000" },
			`--include-inbound-ports: "8080,15000": 15000 is the sidecar's admin port and is never captured`},
		{"include names the prometheus port", func(f *Flags) { f.IncludeInboundPorts = "15090" },
			`--include-inbound-ports: "15090": 15090 is the sidecar's prometheus port and is never captured`},
		{"include names the inbound port", func(f *Flags) { f.IncludeInboundPorts = "15006" },
			`--include-inbound-ports: "15006": 15006 is the inbound capture port (--inbound-port) and is never captured`},
		{"include names a custom outbound port", func(f *Flags) { f.OutboundPort, f.IncludeInboundPorts = "9000", "9000" },
			`--include-inbound-ports: "9000": 9000 is the outbound capture port (--outbound-port) and is never captured`},
		{"exclude with include list", func(f *Flags) { f.IncludeInboundPorts, f.ExcludeInboundPorts = "8080", "9090" },
			`--exclude-inbound-ports: "9090": conflicts with the --include-inbound-ports list "8080"; exclusions apply only when --include-inbound-ports is "*"`},
		{"exclude all with include list", func(f *Flags) { f.IncludeInboundPorts, f.ExcludeInboundPorts = "8080", "*" },
			`--exclude-inbound-ports: "*": conflicts with the --include-inbound-ports list "8080"; exclusions apply only when --include-inbound-ports is "*"`},
		{"every bad flag is named, one per line", func(f *Flags) { f.OutboundPort, f.ProxyGID, f.ExcludeOutboundIPRanges = "x", "", "1.2.3" },
			`--outbound-port: "x" is not a port number (1-65535)` + "\n" +
				`--proxy-gid: "" is not a group ID (1-4294967294)` + "\n" +
				`--exclude-outbound-ip-ranges: "1.2.3": "1.2.3" is not an IP address or CIDR`},
		{"zero Flags", func(f *Flags) { *f = Flags{} },
			`--outbound-port: "" is not a port number (1-65535)` + "\n" +
				`--inbound-port: "" is not a port number (1-65535)` + "\n" +
				`--proxy-uid: "" is not a user ID (1-4294967294)` + "\n" +
				`--proxy-gid: "" is not a group ID (1-4294967294)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := DefaultFlags()
			tt.edit(&f)
			c, err := f.Config()
			if err == nil {
				t.Fatalf("Config() = %+v, want error %q", c, tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Config() error:\n got: %s\nwant: %s", got, tt.want)
			}
			if diff := cmp.Diff(Config{}, c, comparePrefixes()); diff != "" {
				t.Errorf("Config() returned a config with its error (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzConfig feeds arbitrary text to Config through the list flags and
// a port: it must never panic, and a Config it accepts must make plans
// that render. (sidecar's FuzzLists checks the list parsers themselves.)
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"", "*", " * ", "80", "80,443", " 80 , 80 ,", "0", "65536", "abc", "80,*",
		"10.0.0.0/8", "10.1.2.3/8,::1", "::ffff:10.0.0.1", "::ffff:0:0/90", "fe80::1%lo", "1.2.3.4/32,2001:db8::/129",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		fl := DefaultFlags()
		fl.IncludeInboundPorts, fl.ExcludeOutboundPorts, fl.ExcludeOutboundIPRanges, fl.ProxyUID = raw, raw, raw, raw
		if c, err := fl.Config(); err == nil {
			NewPlan(c, IPv4).Save()
			NewPlan(c, IPv6).Save()
		}
	})
}
