package meshtest

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// HTTPClient is an HTTP client whose connections are made from a pod as
// an application (so they are captured): HTTP/1.1 with keep-alive, or h2c
// with prior knowledge. Dials counts the connections it opened.
type HTTPClient struct {
	*http.Client
	Dials atomic.Int32
}

// NewHTTPClient returns a client for pod; h2c chooses HTTP/2.
func NewHTTPClient(pod *testpod.Pod, h2c bool) *HTTPClient {
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	c := &HTTPClient{}
	c.Client = &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			Protocols: &p,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c.Dials.Add(1)
				return pod.Dial(ctx, network, addr)
			},
			DisableCompression: true,
		},
	}
	return c
}

// ServeHTTP serves h on addr in pod (":port" is dual-stack), HTTP/1.x and
// h2c, until t's cleanups run.
func ServeHTTP(t testpod.Cleaner, pod *testpod.Pod, addr string, h http.Handler) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("meshtest: app in %s: %v", pod.Name, err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: time.Minute}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
}
