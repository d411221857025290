package sidecar_test

import (
	"fmt"

	"github.com/pillionmesh/pillion/sidecar"
)

// An IPv4-mapped range is the IPv4 range it stands for, so that it matches
// the unmapped destinations the proxy sees.
func ExampleParsePrefix() {
	for _, s := range []string{"::ffff:10.0.0.0/104", "10.1.2.3/8", "2001:db8::1", "10.0.0.0/33"} {
		if p, err := sidecar.ParsePrefix(s); err != nil {
			fmt.Println(err)
		} else {
			fmt.Println(p)
		}
	}
	// Output:
	// 10.0.0.0/8
	// 10.0.0.0/8
	// 2001:db8::1/128
	// "10.0.0.0/33" is not an IP address or CIDR
}

func ExampleParsePortSet() {
	s, err := sidecar.ParsePortSet(" 8080, 80,8080")
	fmt.Println(s, s.Contains(80), s.Contains(443), err)
	// Output: 80,8080 true false <nil>
}
