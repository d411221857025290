package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestDrain stops b's sidecar, by SIGTERM and by POST /quitquitquit, while
// a has requests in flight to b and an opaque connection open: /ready says
// DRAINING at once, new connections to b are refused, every request b had
// accepted finishes with 200, the opaque connection works until the drain
// deadline and is then closed, and the sidecar exits 0 within the deadline.
func TestDrain(t *testing.T) {
	for _, stop := range []struct {
		name string
		do   func(t *testing.T, b *meshtest.Sidecar)
	}{
		{"SIGTERM", func(t *testing.T, b *meshtest.Sidecar) {
			if err := b.Proxy.Signal(unix.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}},
		{"quitquitquit", func(t *testing.T, b *meshtest.Sidecar) {
			if out := curl(t, b.Pod, "-X", "POST", "http://127.0.0.1:15000/quitquitquit"); out != "OK\n" {
				t.Fatalf("POST /quitquitquit: %q", out)
			}
		}},
	} {
		t.Run(stop.name, func(t *testing.T) { testDrain(t, stop.do) })
	}
}

const drainTimeout = 3 * time.Second

func testDrain(t *testing.T, stop func(*testing.T, *meshtest.Sidecar)) {
	m := newHTTPMeshWith(t, func(a, b *testpod.Pod) ([]string, []string) {
		iss := meshtest.StartIssuer(t, pillionBin, time.Hour, a, b)
		return []string{iss.ProxyArg(a)}, []string{iss.ProxyArg(b), "--drain-timeout=" + drainTimeout.String()}
	}, "", "")
	podC := m.node.AddPod(t, "c")
	held := holdConn(t, m)
	ping := func(i int) error { return held.ping(i, 2*time.Second) }
	if err := ping(0); err != nil {
		t.Fatalf("held connection before the drain: %v", err)
	}

	// Requests b accepts before the stop and answers after it.
	const inFlight = 8
	client := meshtest.NewHTTPClient(m.a.Pod, false)
	var wg sync.WaitGroup
	results := make(chan error, inFlight)
	for range inFlight {
		wg.Go(func() {
			resp, err := client.Get("http://" + m.bAddr + "/sleep?ms=1500")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					err = fmt.Errorf("%s (%s)", resp.Status, resp.Header.Get("pillion-proxy-error"))
				}
			}
			results <- err
		})
	}
	// A keep-alive HTTP/1.1 client without a sidecar (PERMISSIVE) is told
	// to go: its answer says Connection: close.
	plain := make(chan *http.Response, 1)
	go func() {
		resp, err := meshtest.NewHTTPClient(podC, false).Get("http://" + m.bAddr + "/sleep?ms=1500")
		if err != nil {
			t.Errorf("the plaintext request b had accepted: %v", err)
			resp = nil
		} else {
			resp.Body.Close()
		}
		plain <- resp
	}()
	time.Sleep(500 * time.Millisecond) // all of them reach b's app
	stopped := time.Now()
	stop(t, m.b)

	if out, _ := m.b.Pod.Command(context.Background(), testpod.Root, "curl", "-s", "http://127.0.0.1:15000/ready").Output(); !strings.HasPrefix(string(out), "DRAINING") {
		t.Errorf("/ready while draining: %q, want DRAINING", out)
	}
	if out, err := podC.Command(context.Background(), testpod.Root, "curl", "-sS", "--max-time", "2", "http://"+m.bAddr+"/fixed").CombinedOutput(); err == nil || !strings.Contains(string(out), "Couldn't connect") {
		t.Errorf("a new connection to b while it drains: %v %q, want it refused", err, out)
	}
	if err := ping(1); err != nil {
		t.Errorf("the held connection failed before the drain deadline: %v", err)
	}
	wg.Wait()
	if resp := <-plain; resp != nil && (resp.StatusCode != http.StatusNoContent || !resp.Close) {
		t.Errorf("the keep-alive client's answer during the drain: %s, Connection: close %v; want 204 and close", resp.Status, resp.Close)
	}
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("a request b had accepted failed: %v", err)
		}
	}

	select {
	case <-m.b.Proxy.Done():
	case <-time.After(drainTimeout + 2*time.Second):
		t.Fatalf("b's sidecar still running %v after the stop", time.Since(stopped))
	}
	if err := m.b.Proxy.Wait(); err != nil {
		t.Errorf("b's sidecar exited with %v, want 0:\n%s", err, m.b.Proxy.Output())
	}
	if took := time.Since(stopped); took < drainTimeout-500*time.Millisecond {
		t.Errorf("b's sidecar exited after %v: it did not wait for the held connection until the %v deadline", took, drainTimeout)
	}
	_ = held.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := held.r.ReadString('\n'); err == nil {
		t.Error("the held connection is still open after the drain deadline")
	}
}
