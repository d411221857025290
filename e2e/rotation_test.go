package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// TestRotationUnderLoad: SVIDs live 8 s (renewed every 4 s) and the CA 32
// s (the next CA joins the bundle at 16 s and signs from 24 s) while a sends
// to b for 30 s: requests on a kept-alive connection, a new opaque
// connection after another, and one opaque connection held open
// throughout. Nothing fails, b's sidecar takes several SVIDs, and the CA
// that signs them changes.
func TestRotationUnderLoad(t *testing.T) {
	m := newHTTPMeshTTL(t, 8*time.Second, 32*time.Second, "", "")
	res := meshLoad(t, m, 30*time.Second)
	t.Logf("load: %s", res)
	if res.failures() > 0 {
		t.Errorf("%s; first failures: %v", res, res.errs)
	}
	serials := svidSerials(m.b)
	if len(serials) < 3 {
		t.Errorf("b's sidecar took %d SVIDs (%v) in 30 s of 8 s SVIDs; want at least 3", len(serials), serials)
	}
	for _, step := range []string{"CA prepared", "CA activated"} {
		if len(m.issuer.Lines(step)) == 0 {
			t.Errorf("the issuer did not log %q in 30 s of a 32 s CA:\n%s", step, m.issuer.Output())
		}
	}
	if issuers := svidIssuers(m.b); len(issuers) < 2 {
		t.Errorf("b's SVIDs were all signed by %v; want the CA to change under load", issuers)
	}
}

// svidIssuers are the distinct CAs (authority key IDs) that signed the
// SVIDs sc's sidecar took.
func svidIssuers(sc *meshtest.Sidecar) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range sc.Logs() {
		if l.Msg == "identity: SVID from the Workload API" && !seen[l.Issuer] {
			seen[l.Issuer] = true
			out = append(out, l.Issuer)
		}
	}
	return out
}

// loadResult counts what meshLoad did.
type loadResult struct {
	mu                          sync.Mutex
	requests, newConns, pings   int
	reqFail, connFail, pingFail int
	errs                        []error // the first few
}

func (r *loadResult) String() string {
	return fmt.Sprintf("%d requests (%d failed), %d new connections (%d failed), %d pings on one held connection (%d failed)",
		r.requests, r.reqFail, r.newConns, r.connFail, r.pings, r.pingFail)
}

func (r *loadResult) failures() int { return r.reqFail + r.connFail + r.pingFail }

func (r *loadResult) add(count, fail *int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*count++
	if err != nil {
		*fail++
		if len(r.errs) < 5 {
			r.errs = append(r.errs, err)
		}
	}
}

// meshLoad sends from a to b for d, three ways at once: HTTP requests on a
// kept-alive client connection (pooled HTTP/2 between the sidecars),
// opaque TCP connections each new (a new mTLS handshake each), and pings
// on one opaque connection held open throughout (an established mTLS
// connection). It serves b:9001 (line echo) and b:9000 (echo until EOF).
func meshLoad(t *testing.T, m *httpMesh, d time.Duration) *loadResult {
	t.Helper()
	meshtest.ServeEcho(t, m.b.Pod, ":9000")
	held := holdConn(t, m)

	res := &loadResult{}
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	wg.Go(func() {
		client := meshtest.NewHTTPClient(m.a.Pod, false)
		for time.Now().Before(stop) {
			resp, err := client.Get("http://" + m.bAddr + "/fixed")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("GET /fixed: %s (%s)", resp.Status, resp.Header.Get("pillion-proxy-error"))
				}
			}
			res.add(&res.requests, &res.reqFail, err)
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for i := 0; time.Now().Before(stop); i++ {
			msg := fmt.Sprintf("OPAQUE %d", i)
			_, echoed, err := meshtest.Call(m.a.Pod, hostPort(m.b.Pod.IPv4, 9000), msg)
			if err == nil && echoed != msg {
				err = fmt.Errorf("new connection %d: echoed %q", i, echoed)
			}
			res.add(&res.newConns, &res.connFail, err)
			time.Sleep(20 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for i := 0; time.Now().Before(stop); i++ {
			err := held.ping(i, 5*time.Second)
			res.add(&res.pings, &res.pingFail, err)
			time.Sleep(100 * time.Millisecond)
		}
	})
	wg.Wait()
	return res
}

// svidSerials are the serial numbers of the SVIDs sc's sidecar took, in
// order.
func svidSerials(sc *meshtest.Sidecar) []string {
	var out []string
	for _, l := range sc.Logs() {
		if l.Msg == "identity: SVID from the Workload API" {
			out = append(out, l.Serial)
		}
	}
	return out
}

// heldConn is an opaque connection from a to b's line echo (b:9001), kept
// open to check an established connection survives.
type heldConn struct {
	net.Conn
	r *bufio.Reader
}

// holdConn serves a line echo on b:9001 and connects to it from a. The
// connection is closed when the test ends.
func holdConn(t *testing.T, m *httpMesh) *heldConn {
	t.Helper()
	serveLineEcho(t, m, 9001)
	c, err := dialHeld(m, 9001)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serveLineEcho serves, on port of b, an echo of what each connection
// sends, as it arrives, for as long as the connection lasts (no deadline).
func serveLineEcho(t *testing.T, m *httpMesh, port uint16) {
	t.Helper()
	l, err := m.b.Pod.Listen("tcp", ":"+strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, l, func(c net.Conn) {
		_ = c.SetDeadline(time.Time{}) // held for a whole soak, not Serve's 2 minutes
		_, _ = io.Copy(c, c)
	})
}

// dialHeld connects from a to b's line echo on port (serveLineEcho).
func dialHeld(m *httpMesh, port uint16) (*heldConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.a.Pod.Dial(ctx, "tcp", hostPort(m.b.Pod.IPv4, port))
	if err != nil {
		return nil, err
	}
	return &heldConn{Conn: c, r: bufio.NewReader(c)}, nil
}

// ping sends line i and reads it back, within timeout.
func (h *heldConn) ping(i int, timeout time.Duration) error {
	_ = h.SetDeadline(time.Now().Add(timeout))
	line := fmt.Sprintf("ping %d\n", i)
	if _, err := io.WriteString(h, line); err != nil {
		return err
	}
	got, err := h.r.ReadString('\n')
	if err == nil && got != line {
		err = fmt.Errorf("held connection: sent %q, got %q", line, got)
	}
	return err
}
