package redirect

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

func TestOriginalDst(t *testing.T) {
	privileged.Require(t, "ip", "iptables", "ip6tables")
	pod := testpod.NewNode(t).AddPod(t, "app")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cmd := range [][]string{
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "198.18.0.99", "--dport", "8080", "-j", "REDIRECT", "--to-ports", "15001"},
		{"ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "fd00:ca7::99", "--dport", "8443", "-j", "REDIRECT", "--to-ports", "15001"},
	} {
		if _, err := pod.Exec(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, listen, dial string
		want               netip.AddrPort
	}{
		{"ipv4 redirected", "0.0.0.0:15001", "198.18.0.99:8080", netip.MustParseAddrPort("198.18.0.99:8080")},
		{"ipv6 redirected", "[::]:15001", "[fd00:ca7::99]:8443", netip.MustParseAddrPort("[fd00:ca7::99]:8443")},
		{"ipv4 direct", "0.0.0.0:15001", pod.IPv4.String() + ":15001", netip.AddrPortFrom(pod.IPv4, 15001)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			network := "tcp4"
			if tt.want.Addr().Is6() {
				network = "tcp6"
			}
			l, err := pod.Listen(network, tt.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			c, err := pod.Dial(ctx, network, tt.dial)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			got, err := OriginalDst(sc.(*net.TCPConn))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("OriginalDst = %v, want %v", got, tt.want)
			}
			// The socket must still be non-blocking and usable: a deadline works.
			_ = sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := sc.Read(make([]byte, 1)); !isTimeout(err) {
				t.Errorf("read after OriginalDst = %v, want a deadline time-out", err)
			}
		})
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
