package proxy

import (
	"net"
	"net/netip"
	"testing"

	"github.com/pillionmesh/pillion/internal/smuggling"
)

// TestSmuggling runs the request-smuggling corpus (internal/smuggling, the
// table the end-to-end test runs too) through sidecar A, mTLS, and sidecar
// B to a raw application that records every byte; and straight to B's
// inbound listener, as a plaintext caller outside the mesh. Each case is
// refused with nothing forwarded and the connection closed, or the
// application gets exactly one well-formed request and then the client's
// follow-up: the sidecars and the application never disagree about where
// a request ends.
func TestSmuggling(t *testing.T) {
	for _, tc := range smuggling.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			app := &smuggling.App{}
			front, _, b := meshPair(t, loopbackServer(t, app.Serve), benchConfig(), benchConfig())
			var inbound netip.AddrPort
			for _, l := range b.Listeners() {
				if l.Direction == Inbound && l.Addr.Addr().Is4() {
					inbound = l.Addr
				}
			}
			for _, via := range []struct {
				name string
				addr netip.AddrPort
			}{{"mesh", front}, {"plaintext to B", inbound}} {
				dial := func() (net.Conn, error) { return net.Dial("tcp", via.addr.String()) }
				t.Logf("%s: %s", via.name, smuggling.Run(t, dial, app, tc))
			}
		})
	}
}
