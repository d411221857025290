package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/filters"
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

// TestFramingCountsEveryRequest: pipelined requests, the last with both
// Content-Length and Transfer-Encoding, through both sidecars: the first
// ones are served (OPTIONS * too, which net/http's general OPTIONS handler
// would have answered without the handler, so that framing would have
// refused the wrong request), the last refused.
func TestFramingCountsEveryRequest(t *testing.T) {
	app := &smuggling.App{}
	front, _, _ := meshPair(t, loopbackServer(t, app.Serve), benchConfig(), benchConfig())
	c, err := net.Dial("tcp", front.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		_, _ = io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"+
			"POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"+smuggling.Smuggled)
	}()
	var statuses []int
	var last *http.Response
	br := bufio.NewReader(c)
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		_, _ = io.Copy(io.Discard, res.Body)
		statuses = append(statuses, res.StatusCode)
		last = res
	}
	if fmt.Sprint(statuses) != "[200 200 400]" {
		t.Fatalf("statuses %v, want [200 200 400]", statuses)
	}
	if last.Header.Get(filters.FlagsHeader) != "DPE" || !last.Close ||
		last.Header.Get(filters.ErrorHeader) != "request has both Content-Length and Transfer-Encoding" {
		t.Errorf("the refusal: flags %q, reason %q, close %v; want DPE, the reason, close",
			last.Header.Get(filters.FlagsHeader), last.Header.Get(filters.ErrorHeader), last.Close)
	}
	time.Sleep(100 * time.Millisecond)
	var got []string
	for _, b := range app.Since(nil) {
		for _, line := range strings.Split(string(b), "\r\n") {
			if strings.HasSuffix(line, " HTTP/1.1") {
				got = append(got, line)
			}
		}
	}
	if fmt.Sprint(got) != "[GET /1 HTTP/1.1 OPTIONS * HTTP/1.1]" {
		t.Errorf("the application got %q, want GET /1 and OPTIONS *", got)
	}
}
