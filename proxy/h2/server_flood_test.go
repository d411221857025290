package h2

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// A client that sends PINGs and never reads their answers: the server
// queues a bounded number of answers, then closes the connection, rather
// than buffer without limit (CVE-2019-9512). The reader loop never waits
// on the connection, so without the bound nothing else would stop it.
func TestServerPingFlood(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	cl, sv := net.Pipe() // no buffer: what the client does not read, the server cannot write
	served := make(chan struct{})
	go func() {
		s.ServeConn(context.Background(), sv)
		close(served)
	}()
	defer cl.Close()
	fr := http2.NewFramer(cl, cl)
	go func() { // the server's SETTINGS and WINDOW_UPDATE, then nothing
		_, _ = fr.ReadFrame()
		_, _ = fr.ReadFrame()
	}()
	if _, err := cl.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	const n = 200000
	sent := 0
	for ; sent < n; sent++ {
		if fr.WritePing(false, [8]byte{1}) != nil {
			break
		}
	}
	if sent == n {
		t.Fatalf("the server read %d PINGs whose answers nobody read", n)
	}
	if sent < maxQueuedControl {
		t.Fatalf("the server stopped reading after %d PINGs, before its bound of %d answers", sent, maxQueuedControl)
	}
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not closed")
	}
}
