package sidecar

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// comparePrefixes lets cmp compare netip values, which have unexported fields.
func comparePrefixes() cmp.Option { return cmpopts.EquateComparable(netip.Prefix{}) }

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"IPv4 CIDR", "10.0.0.0/8", "10.0.0.0/8"},
		{"IPv4 CIDR is masked", "10.1.2.3/8", "10.0.0.0/8"},
		{"bare IPv4 is a /32", "192.168.0.1", "192.168.0.1/32"},
		{"IPv6 CIDR is masked", "2001:db8::1/32", "2001:db8::/32"},
		{"bare IPv6 is a /128", "2001:db8::1", "2001:db8::1/128"},
		{"mapped range is the IPv4 range", "::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"mapped range, masked", "::ffff:10.1.2.3/104", "10.0.0.0/8"},
		{"mapped /96 is every IPv4 address", "::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"bare mapped address is an IPv4 /32", "::ffff:10.0.0.1", "10.0.0.1/32"},
		{"wider than the mapped block stays IPv6", "::ffff:0:0/90", "::ffc0:0:0/90"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePrefix(tt.in)
			if err != nil || got != netip.MustParsePrefix(tt.want) {
				t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParsePrefixRefusals(t *testing.T) {
	for _, in := range []string{
		"", " 10.0.0.0/8", "10.0.0.0/33", "2001:db8::/129", "10.0.0.0/", "1.2.3", "example.com",
		"fe80::1%eth0", "fe80::1%eth0/64", "10.0.0.0/8/8", "*",
	} {
		t.Run(in, func(t *testing.T) {
			p, err := ParsePrefix(in)
			want := fmt.Sprintf("%q is not an IP address or CIDR", in)
			if err == nil || err.Error() != want {
				t.Errorf("ParsePrefix(%q) = %v, %v; want error %s", in, p, err, want)
			}
		})
	}
}

func TestParsePortSet(t *testing.T) {
	tests := []struct {
		name, in string
		want     PortSet
		err      string
	}{
		{"empty is none", "", PortSet{}, ""},
		{"blank is none", " , ,", PortSet{}, ""},
		{"star is all", " * ", PortSet{All: true}, ""},
		{"sorted and deduplicated", " 443 , 80,443,,8080, ", PortSet{Ports: []uint16{80, 443, 8080}}, ""},
		{"the extremes", "65535,1", PortSet{Ports: []uint16{1, 65535}}, ""},
		{"not a number", "80,abc", PortSet{}, `"abc" is not a port number (1-65535)`},
		{"zero", "0", PortSet{}, `"0" is not a port number (1-65535)`},
		{"too big", "8080, 70000", PortSet{}, `"70000" is not a port number (1-65535)`},
		{"negative", "-1", PortSet{}, `"-1" is not a port number (1-65535)`},
		{"a range is not a port", "80-90", PortSet{}, `"80-90" is not a port number (1-65535)`},
		{"star among ports", "80,*", PortSet{}, `"*" must stand alone`},
		{"a misplaced star is told before a bad port", "abc,*", PortSet{}, `"*" must stand alone`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePortSet(tt.in)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("ParsePortSet(%q) = %v, %v; want error %s", tt.in, got, err, tt.err)
				}
			} else if err != nil {
				t.Fatalf("ParsePortSet(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParsePortSet(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestPortSetContains(t *testing.T) {
	s := PortSet{Ports: []uint16{80, 443}}
	for p, want := range map[uint16]bool{80: true, 443: true, 81: false, 0: false} {
		if got := s.Contains(p); got != want {
			t.Errorf("%v.Contains(%d) = %v, want %v", s, p, got, want)
		}
	}
	if !(PortSet{All: true}).Contains(1) || (PortSet{}).Contains(1) || !(PortSet{}).Empty() || (PortSet{All: true}).Empty() {
		t.Error("the zero PortSet must be empty and the All one hold every port")
	}
}

func TestParsePrefixSet(t *testing.T) {
	got, err := ParsePrefixSet("2001:db8::1, 10.1.2.3/8, 192.168.0.1,::ffff:172.16.0.0/108,10.0.0.0/8,2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	var want PrefixSet
	for _, s := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.1/32", "2001:db8::/32", "2001:db8::1/128"} {
		want.Prefixes = append(want.Prefixes, netip.MustParsePrefix(s))
	}
	if diff := cmp.Diff(want, got, comparePrefixes()); diff != "" {
		t.Errorf("ParsePrefixSet: masked, mapped IPv4 unmapped, IPv4 first, deduplicated (-want +got):\n%s", diff)
	}
	for in, wantErr := range map[string]string{
		"10.0.0.0/8, example.com": `"example.com" is not an IP address or CIDR`,
		"*,10.0.0.0/8":            `"*" must stand alone`,
	} {
		if s, err := ParsePrefixSet(in); err == nil || err.Error() != wantErr {
			t.Errorf("ParsePrefixSet(%q) = %v, %v; want error %s", in, s, err, wantErr)
		}
	}
}

func TestSetStrings(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"*", "*"},
		{" 443, 80 ,80", "80,443"},
	}
	for _, tt := range tests {
		s, err := ParsePortSet(tt.in)
		if err != nil || s.String() != tt.want {
			t.Errorf("ParsePortSet(%q).String() = %q, %v; want %q", tt.in, s.String(), err, tt.want)
		}
	}
	s, err := ParsePrefixSet("::1, 10.0.0.1")
	if want := "10.0.0.1/32,::1/128"; err != nil || s.String() != want {
		t.Errorf("ParsePrefixSet: %q, %v; want %q", s.String(), err, want)
	}
}

// FuzzLists feeds arbitrary text to the list parsers: they must never
// panic, and a list that parses must render to text that parses to the
// same value.
func FuzzLists(f *testing.F) {
	for _, s := range []string{
		"", "*", " * ", "80", "80,443", " 80 , 80 ,", "0", "65536", "abc", "80,*",
		"10.0.0.0/8", "10.1.2.3/8,::1", "::ffff:10.0.0.1", "::ffff:0:0/90", "fe80::1%lo", "1.2.3.4/32,2001:db8::/129",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if ps, err := ParsePortSet(raw); err == nil {
			again, err := ParsePortSet(ps.String())
			if err != nil {
				t.Fatalf("ParsePortSet(%q) = %v, its rendering %q fails: %v", raw, ps, ps.String(), err)
			}
			if diff := cmp.Diff(ps, again); diff != "" {
				t.Fatalf("port set %q does not survive rendering (-first +second):\n%s", raw, diff)
			}
		}
		if ps, err := ParsePrefixSet(raw); err == nil {
			again, err := ParsePrefixSet(ps.String())
			if err != nil {
				t.Fatalf("ParsePrefixSet(%q) = %v, its rendering %q fails: %v", raw, ps, ps.String(), err)
			}
			if diff := cmp.Diff(ps, again, comparePrefixes()); diff != "" {
				t.Fatalf("prefix set %q does not survive rendering (-first +second):\n%s", raw, diff)
			}
		}
	})
}
