package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// The bounds b's sidecar runs with in TestAbuse: short and small, so that
// the test reaches them in seconds.
const (
	abuseHeaderTimeout = 3 * time.Second
	abuseMaxConns      = 2000
	abuseHandshakesB   = 16 // a's stays at the default, 64
	abuseSlowClients   = 2000
	abuseFlood         = 5000
	abuseMTLSFlood     = 1000
)

// TestAbuse: b's sidecar stays bounded and keeps serving under abuse.
//
//   - 2,000 clients send a request line and then one header byte every 5 s,
//     and 5,000 connections are opened at once, with --max-connections at
//     2,000: a client that was already talking to b through a's sidecar
//     (its pooled connection opened before, which is why the cap does not
//     refuse it) has every request answered, at a p99 within 3× of its p99
//     alone — or, where the machine itself cannot carry the abuse within
//     that (the same abuse aimed at a pod without a sidecar is the
//     control), within 1.5× of its p99 then; what does not fit under the
//     cap is reset at once; the slow
//     clients are closed after --header-timeout; all of it is counted and
//     logged at most once a second; b's descriptors come back to where
//     they were.
//   - 1,000 opaque mTLS connections at once: all work, and neither sidecar
//     ever had more handshakes in flight than its --max-handshakes.
//   - a 1 GiB request body to an application that never reads: neither
//     sidecar's resident memory grows by more than 64 MiB.
func TestAbuse(t *testing.T) {
	raiseNoFile(t, 16384)
	m := newHTTPMeshWith(t, func(a, b *testpod.Pod) ([]string, []string) {
		iss := meshtest.StartIssuer(t, pillionBin, time.Hour, a, b)
		// a's mTLS dials wait for a handshake slot within --dial-timeout:
		// 1,000 at once queue behind b's 16 for seconds on two cores under
		// -race, which is the bound working, not a failure.
		return []string{iss.ProxyArg(a), "--dial-timeout=20s"}, []string{iss.ProxyArg(b),
			"--header-timeout=" + abuseHeaderTimeout.String(),
			"--max-connections=" + strconv.Itoa(abuseMaxConns),
			"--max-handshakes=" + strconv.Itoa(abuseHandshakesB)}
	}, "", "")
	podC := m.node.AddPod(t, "c") // the abusers: no sidecar, plaintext (PERMISSIVE)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, sc := range []*meshtest.Sidecar{m.a, m.b} {
			seen := map[string]int{}
			for _, l := range sc.Logs() {
				if l.Level == "warn" || l.Level == "error" {
					seen[l.Msg+" "+l.Error]++
				}
			}
			t.Logf("%s's sidecar's warnings and errors: %v", sc.Pod.Name, seen)
		}
	})
	t.Run("slow headers and a connection flood", func(t *testing.T) { testFlood(t, m, podC) })
	t.Run("mTLS handshake flood", func(t *testing.T) { testHandshakeFlood(t, m) })
	t.Run("body to an application that never reads", func(t *testing.T) { testUnreadBody(t, m) })
}

// raiseNoFile raises the test process's soft limit of open files to at
// least n (the hard limit permitting): the floods hold thousands.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Fatalf("the hard limit of open files is %d, the test needs %d", lim.Max, n)
	}
	lim.Cur = n
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

func testFlood(t *testing.T, m *httpMesh, podC *testpod.Pod) {
	admin := meshtest.NewHTTPClient(m.b.Pod, false)
	pid, err := m.b.ProxyPID()
	if err != nil {
		t.Fatal(err)
	}
	// The normal client, alone: curl, a process of its own in a (the
	// floods run in the test's process), asking through a's sidecar over
	// one keep-alive connection; a's pooled connection to b is open after
	// the first request and stays for the whole test.
	url := "http://" + m.bAddr + "/fixed"
	curl(t, m.a.Pod, url)
	aloneLat, aloneErrs := curlTimes(t, m.a.Pod, url, 800)()
	fdsBefore, err := meshtest.OpenFDs(pid)
	if err != nil {
		t.Fatal(err)
	}

	// The control: the same abuse aimed at a pod without a sidecar whose
	// listener does with it what b's sidecar does. On a machine whose cores
	// the abusers share with the sidecars (two in CI), the flood costs
	// every process there — the abusers' connects, the kernel's handshakes
	// — before any sidecar sees it: this measures that cost alone.
	control := runAbuse(t, m.a.Pod, url, podC, serveLikeTheCap(t, m.node.AddPod(t, "d"), abuseMaxConns-1, abuseHeaderTimeout))
	under := runAbuse(t, m.a.Pod, url, podC, m.bAddr)
	closed, flood, floodDone := under.closed, under.flood, under.floodDone

	// The normal client.
	p99Alone, p99Control, p99Under := percentile(aloneLat, 0.99), percentile(control.lat, 0.99), percentile(under.lat, 0.99)
	t.Logf("normal client's p99: %v alone (%d requests); %v under the abuse aimed at b (%.2f×); %v under the same abuse aimed at a pod without a sidecar (%.2f×)",
		p99Alone, len(aloneLat), p99Under, float64(p99Under)/float64(p99Alone), p99Control, float64(p99Control)/float64(p99Alone))
	if errs := slices.Concat(aloneErrs, control.errs, under.errs); len(errs) > 0 {
		t.Errorf("%d of the normal client's requests failed, want none; first: %v", len(errs), errs[0])
	}
	// Within 3× of alone, as long as the machine itself can carry the
	// abuse within 3× (the control); where it cannot, b's sidecar may add
	// at most half again to what the abuse costs without it.
	bound, why := 3*p99Alone, "3× its p99 alone"
	if c := p99Control * 3 / 2; c > bound {
		bound, why = c, "1.5× its p99 under the same abuse without a sidecar in the path"
	}
	if p99Under > bound {
		t.Errorf("the normal client's p99 under the abuse aimed at b is %v, more than %s (%v)", p99Under, why, bound)
	}

	// The slow clients: as many as fit under the cap beside the normal
	// client's connection held until the header time-out, the rest reset
	// at once.
	fit := abuseMaxConns - 1
	if closed.timedOut != fit || closed.atOnce != abuseSlowClients-fit || closed.open != 0 || closed.early != 0 {
		t.Errorf("slow clients: %d closed after the header time-out (%v), %d at once, %d early, %d still open; want %d, %d, 0, 0",
			closed.timedOut, abuseHeaderTimeout, closed.atOnce, closed.early, closed.open, fit, abuseSlowClients-fit)
	}
	t.Logf("slow clients held %v to %v", closed.minHeld.Round(time.Millisecond), closed.maxHeld.Round(time.Millisecond))
	// The flood, all over the cap: every connection reset at once.
	t.Logf("flood: %d refused, %d dial errors, %d left open; reset within %v (p99 %v) of connecting",
		flood.refused, flood.dialErrs, flood.open, flood.maxWait.Round(time.Millisecond), percentile(flood.waits, 0.99).Round(time.Millisecond))
	if flood.refused+flood.dialErrs != abuseFlood || flood.open != 0 || flood.maxWait > time.Second {
		t.Errorf("flood: %d reset, %d dial errors, %d answered or left open, slowest reset %v; want all %d reset or refused within 1s",
			flood.refused, flood.dialErrs, flood.open, flood.maxWait, abuseFlood)
	}

	waitStats(t, admin, `^pillion_(http_header_timeouts_total|connections_refused_total)\{direction="inbound"`, map[string]string{
		`pillion_http_header_timeouts_total{direction="inbound"}`:                         strconv.Itoa(fit),
		`pillion_connections_refused_total{direction="inbound",reason="over_limit"}`:      strconv.Itoa(abuseFlood + abuseSlowClients - fit),
		`pillion_connections_refused_total{direction="inbound",reason="loop"}`:            "0",
		`pillion_connections_refused_total{direction="inbound",reason="no_original_dst"}`: "0",
		`pillion_connections_refused_total{direction="inbound",reason="plaintext"}`:       "0",
	})
	checkOnceASecond(t, m.b, "connection limit reached: refusing", floodDone)
	checkOnceASecond(t, m.b, "closing connections whose request headers did not arrive in time", abuseHeaderTimeout+2*time.Second)

	// b's descriptors come back to where they were.
	deadline := time.Now().Add(10 * time.Second)
	for {
		fds, err := meshtest.OpenFDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if fds <= fdsBefore {
			t.Logf("b's sidecar: %d descriptors before the flood, %d after", fdsBefore, fds)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("b's sidecar holds %d descriptors 10 s after the flood, %d before", fds, fdsBefore)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testHandshakeFlood(t *testing.T, m *httpMesh) {
	meshtest.ServeEcho(t, m.b.Pod, ":5432") // an opaque port: each connection its own mTLS one
	var mu sync.Mutex
	var failures []error
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	start := time.Now()
	dialFrom(m.a.Pod, hostPort(m.b.Pod.IPv4, 5432), abuseMTLSFlood, func(i int, c net.Conn, err error) {
		if err != nil {
			fail(err)
			return
		}
		wg.Go(func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := fmt.Sprintf("connection %d", i)
			_, err := io.WriteString(c, msg)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			var b []byte
			if err == nil {
				b, err = io.ReadAll(c)
			}
			if _, echoed, _ := strings.Cut(string(b), "|"); err == nil && echoed != msg {
				err = fmt.Errorf("sent %q, echoed %q", msg, b)
			}
			if err != nil {
				fail(fmt.Errorf("connection %d: %w", i, err))
			}
		})
	})
	wg.Wait()
	t.Logf("%d opaque mTLS connections in %v", abuseMTLSFlood, time.Since(start).Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d of %d mTLS connections failed, want none; first: %v", len(failures), abuseMTLSFlood, failures[0])
	}
	for _, side := range []struct {
		sc  *meshtest.Sidecar
		max int
	}{{m.a, 64}, {m.b, abuseHandshakesB}} {
		admin := meshtest.NewHTTPClient(side.sc.Pod, false)
		st := statLines(t, want200(t, admin, "GET", adminURL+"/stats?filter=^pillion_tls_handshake"))
		peak, _ := strconv.Atoi(st["pillion_tls_handshakes_active_peak"])
		queued, _ := strconv.Atoi(st["pillion_tls_handshakes_queued_total"])
		t.Logf("%s's sidecar: at most %d handshakes in flight (bound %d), %d waited, %s timed out waiting",
			side.sc.Pod.Name, peak, side.max, queued, st["pillion_tls_handshake_queue_timeouts_total"])
		if peak < 1 || peak > side.max || queued == 0 || st["pillion_tls_handshake_queue_timeouts_total"] != "0" {
			t.Errorf("%s's sidecar: peak of handshakes in flight %d, %d waited, %s timed out; want 1-%d, some waiting, none timed out",
				side.sc.Pod.Name, peak, queued, st["pillion_tls_handshake_queue_timeouts_total"], side.max)
		}
	}
}

// countingReader counts what was read from r, for another goroutine to
// watch.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func testUnreadBody(t *testing.T, m *httpMesh) {
	// An application that accepts and never reads.
	l, err := m.b.Pod.Listen("tcp", ":8082")
	if err != nil {
		t.Fatal(err)
	}
	never := make(chan struct{})
	meshtest.Serve(t, l, func(net.Conn) { <-never })
	t.Cleanup(func() { close(never) })

	checkRSS := watchSidecarsRSS(t, m)

	const size = 1 << 30
	body := &countingReader{r: newPatternReader(size)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+hostPort(m.b.Pod.IPv4, 8082)+"/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	done := make(chan error, 1)
	go func() {
		res, err := meshtest.NewHTTPClient(m.a.Pod, false).Do(req)
		if err == nil {
			res.Body.Close()
			err = fmt.Errorf("answered %s", res.Status)
		}
		done <- err
	}()
	// The body stops moving once the buffers on the way are full: wait
	// until nothing moved for 2 s.
	var sent int64
	for still := 0; still < 20; {
		time.Sleep(100 * time.Millisecond)
		if n := body.n.Load(); n != sent {
			sent, still = n, 0
		} else {
			still++
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("the request to the application that never reads: %v, want it pending until cancelled", err)
	}
	checkRSS(64<<20, "a body the application does not read is buffered")
	t.Logf("the client could send %d MiB of the 1 GiB body before it stalled", sent>>20)
	if sent >= size {
		t.Errorf("the whole body was taken, though the application reads nothing")
	}
}
