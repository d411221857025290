package sidecar

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The parsers' errors name the offending item, not the flag, annotation
// or field it came in: the caller puts that in front (`--exclude-inbound-ports:
// "80,abc": "abc" is not a port number (1-65535)`).

// PortSet is a set of TCP ports, or every port. The zero PortSet is empty.
type PortSet struct {
	All   bool     // every port; Ports is then nil
	Ports []uint16 // ascending, no duplicates
}

// String renders the set as the list it was parsed from: "*", "" or a
// comma list.
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

// ParsePortSet parses a port list the way pillion's port flags and
// annotations take it: "*" for every port, "" for none, or a comma list of
// ports (blanks around items and duplicates are fine).
func ParsePortSet(raw string) (PortSet, error) {
	ports, all, err := parseList(raw, ParsePort)
	if err != nil || all {
		return PortSet{All: all}, err
	}
	slices.Sort(ports)
	return PortSet{Ports: slices.Compact(ports)}, nil
}

// ParsePort parses one TCP port, 1-65535, blanks around it allowed.
func ParsePort(raw string) (uint16, error) {
	s := strings.TrimSpace(raw)
	// ParseUint also refuses signs, spaces and the empty string.
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(p), nil
}

// PrefixSet is a set of address ranges, or every address. The zero
// PrefixSet is empty.
type PrefixSet struct {
	All      bool           // every address; Prefixes is then nil
	Prefixes []netip.Prefix // as ParsePrefix makes them; IPv4 before IPv6, ascending, no duplicates
}

// String renders the set as a list: "*", "" or a comma list of CIDRs.
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

// ParsePrefixSet parses an address list: "*" for every address, "" for
// none, or a comma list of CIDRs and bare addresses, IPv4 and IPv6 mixed,
// each as ParsePrefix takes it.
func ParsePrefixSet(raw string) (PrefixSet, error) {
	prefixes, all, err := parseList(raw, ParsePrefix)
	if err != nil || all {
		return PrefixSet{All: all}, err
	}
	slices.SortFunc(prefixes, comparePrefix)
	return PrefixSet{Prefixes: slices.Compact(prefixes)}, nil
}

// ParsePrefix parses a CIDR or a bare address (a /32 or /128), masks it,
// and turns IPv4-mapped IPv6 ranges into the IPv4 ranges they stand for
// (::ffff:10.0.0.0/104 is 10.0.0.0/8): a socket connecting to
// ::ffff:10.0.0.1 sends IPv4 packets, which only an IPv4 rule can exclude,
// and the proxy sees their destination unmapped, so a range kept mapped
// would never match. It is the one parser of the sidecar's address ranges:
// the capture rules' exclusions and the config file's mesh networks.
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

// parseList splits a comma list, trimming spaces and dropping empty
// items, then parses each item. It returns all=true for a lone "*"; a "*"
// among other items is an error (before any item is parsed), as is the
// first item parse refuses.
func parseList[T any](raw string, parse func(string) (T, error)) (values []T, all bool, err error) {
	if strings.TrimSpace(raw) == "*" {
		return nil, true, nil
	}
	var items []string
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
	for _, item := range items {
		v, err := parse(item)
		if err != nil {
			return nil, false, err
		}
		values = append(values, v)
	}
	return values, false, nil
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
