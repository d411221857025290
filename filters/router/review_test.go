package router

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A plain GET (no Upgrade asked for) answered 101 with no Upgrade header:
// upgradeType gives "" and a.info.Upgrade is "", so switchProtocols takes
// the client's connection and tunnels it. net/http's Transport gave such a
// 101 no writable body, and ReverseProxy answered 502.
func TestReview101ToAPlainRequestIsRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwardVia(t, func(r *http.Request) (*http.Response, error) {
			app, _ := net.Pipe()
			res := respond(r, http.StatusSwitchingProtocols, nil, nil, 0)
			res.Body = app
			return res, nil
		}, w, r)
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("the client got 101 %v for a request that asked for no upgrade", res.Header)
	}
}
