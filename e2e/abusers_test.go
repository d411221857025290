package e2e

// The abusers of TestAbuse and how their effect is measured: the normal
// client (curl), slow clients, a connection flood, and the control that
// aims them at a pod without a sidecar.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

// abuseRun is what the normal client saw during one round of abuse, and
// what became of the abusers.
type abuseRun struct {
	lat       []time.Duration
	errs      []error
	closed    slowClosed
	flood     floodResult
	floodDone time.Duration // from the first slow client
}

// runAbuse runs the normal client (curl in pod, url) for 4 s, past the
// slow clients' end, while the slow clients and the flood go from podC to
// target.
func runAbuse(t *testing.T, pod *testpod.Pod, url string, podC *testpod.Pod, target string) abuseRun {
	t.Helper()
	under := curlTimes(t, pod, url, 1600)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	slow := openSlowClients(t, podC, target, abuseSlowClients)
	opened := time.Since(start)
	var r abuseRun
	r.flood = connectionFlood(podC, target, abuseFlood)
	r.floodDone = time.Since(start)
	r.closed = slow.waitClosed(abuseHeaderTimeout + 5*time.Second)
	r.lat, r.errs = under()
	t.Logf("abuse aimed at %s: slow clients opened in %v, flood done at %v", target, opened.Round(time.Millisecond), r.floodDone.Round(time.Millisecond))
	return r
}

// serveLikeTheCap listens on pod's 8080 and does what b's sidecar does
// with the abuse, without a sidecar: it holds the first max connections
// for hold and then closes them, and resets the others at once. It
// returns the address.
func serveLikeTheCap(t *testing.T, pod *testpod.Pod, max int, hold time.Duration) string {
	t.Helper()
	l, err := pod.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var open atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if open.Add(1) > int64(max) {
				open.Add(-1)
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
				continue
			}
			time.AfterFunc(hold, func() {
				c.Close()
				open.Add(-1)
			})
		}
	}()
	return hostPort(pod.IPv4, 8080)
}

// curlReqPerSecond paces curlTimes: steady, well below what the path
// serves, so that a request's time is its latency, not a queue's.
const curlReqPerSecond = 400

// curlTimes starts one curl in pod that GETs url n times, one after
// another over one keep-alive connection at curlReqPerSecond, and returns
// a func that waits for it and returns each request's time and the
// requests that did not answer 200.
func curlTimes(t *testing.T, pod *testpod.Pod, url string, n int) func() ([]time.Duration, []error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	var out strings.Builder
	cmd := pod.Command(ctx, testpod.Root, "curl", "-sS", "--max-time", "10", "--rate", strconv.Itoa(curlReqPerSecond)+"/s",
		"-o", "/dev/null", "-w", "%{http_code} %{time_total}\n", fmt.Sprintf("%s?[1-%d]", url, n))
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("curl: %v", err)
	}
	return func() ([]time.Duration, []error) {
		defer cancel()
		var errs []error
		if err := cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("curl: %w", err))
		}
		var lat []time.Duration
		for line := range strings.SplitSeq(strings.TrimSpace(out.String()), "\n") {
			var code int
			var secs float64
			if _, err := fmt.Sscanf(line, "%d %g", &code, &secs); err != nil || code != http.StatusOK {
				errs = append(errs, fmt.Errorf("curl: %q", line))
				continue
			}
			lat = append(lat, time.Duration(secs*float64(time.Second)))
		}
		if len(lat)+len(errs) < n {
			errs = append(errs, fmt.Errorf("curl made %d requests of %d", len(lat)+len(errs), n))
		}
		return lat, errs
	}
}

// dialFrom opens n connections from pod to addr, in batches of 100 dialled
// one after another by parallel dialers (a dialer holds an OS thread in the
// pod's namespace: thousands at once would be thousands of threads), and
// calls each(i, c, err) as each connect returns. The dialers run at the
// lowest CPU priority: attackers run on other machines, not on the cores
// of the sidecars they attack, and these would otherwise take the cores
// the measured client and the sidecars need (two in CI).
func dialFrom(pod *testpod.Pod, addr string, n int, each func(i int, c net.Conn, err error)) {
	const batch = 100
	var wg sync.WaitGroup
	for from := 0; from < n; from += batch {
		wg.Go(func() {
			_ = pod.Run(func() error {
				// Linux's nice is per thread; this one is locked to fn.
				if prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err == nil {
					_ = unix.Setpriority(unix.PRIO_PROCESS, 0, 19)
					defer unix.Setpriority(unix.PRIO_PROCESS, 0, 20-prio) // the raw call says 20 - nice
				}
				d := net.Dialer{Timeout: 5 * time.Second}
				for i := from; i < min(from+batch, n); i++ {
					c, err := d.Dial("tcp", addr)
					each(i, c, err)
				}
				return nil
			})
		})
	}
	wg.Wait()
}

// slowClients are connections that send a request line at once and then
// one header byte every 5 s, never ending the headers.
type slowClients struct {
	conns  []net.Conn
	opened []time.Time
	ended  []time.Time // when a read saw the connection closed
	wg     sync.WaitGroup
	stop   chan struct{}
}

func openSlowClients(t *testing.T, pod *testpod.Pod, addr string, n int) *slowClients {
	t.Helper()
	s := &slowClients{conns: make([]net.Conn, n), opened: make([]time.Time, n), ended: make([]time.Time, n), stop: make(chan struct{})}
	var mu sync.Mutex
	var failed []error
	dialFrom(pod, addr, n, func(i int, c net.Conn, err error) {
		if errors.Is(err, unix.ECONNRESET) {
			// Accepted and reset over the cap before the connect
			// returned: refused at once.
			s.opened[i] = time.Now()
			s.ended[i] = s.opened[i]
			return
		}
		if err != nil {
			mu.Lock()
			failed = append(failed, err)
			mu.Unlock()
			return
		}
		s.conns[i], s.opened[i] = c, time.Now()
		_, _ = io.WriteString(c, "GET /fixed HTTP/1.1\r\nHost: b\r\nX-Slow: ")
		s.wg.Go(func() {
			_, _ = c.Read(make([]byte, 1)) // the answer never comes: this ends when b closes
			s.ended[i] = time.Now()
		})
	})
	t.Cleanup(func() {
		for _, c := range s.conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if len(failed) > 0 {
		t.Fatalf("%d slow clients could not connect; first: %v", len(failed), failed[0])
	}
	go func() { // one byte every 5 s each
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				for _, c := range s.conns {
					if c != nil {
						_, _ = io.WriteString(c, "x")
					}
				}
			}
		}
	}()
	return s
}

// slowClosed says how the slow clients ended.
type slowClosed struct {
	timedOut, atOnce, early, open int
	minHeld, maxHeld              time.Duration // of those closed after the header time-out
}

// waitClosed waits up to timeout for b to close every slow client and
// sorts them: closed within a second (reset over the cap), after the
// header time-out, in between (early), or not at all.
func (s *slowClients) waitClosed(timeout time.Duration) slowClosed {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
	close(s.stop)
	for _, c := range s.conns {
		if c != nil {
			c.Close() // ends the reads still waiting
		}
	}
	<-done
	var r slowClosed
	r.minHeld = time.Hour
	for i := range s.conns {
		held := s.ended[i].Sub(s.opened[i])
		switch {
		case s.ended[i].IsZero() || held >= timeout:
			r.open++
		case held < time.Second:
			r.atOnce++
		case held < abuseHeaderTimeout-100*time.Millisecond:
			r.early++
		default:
			r.timedOut++
			r.minHeld, r.maxHeld = min(r.minHeld, held), max(r.maxHeld, held)
		}
	}
	return r
}

// floodResult is how a connection flood ended.
type floodResult struct {
	refused, dialErrs, open int
	waits                   []time.Duration // from connected to reset
	maxWait                 time.Duration
}

// connectionFlood opens n connections from pod to addr at once and waits
// for each to be reset (or to stay open 2 s, which it counts as open).
func connectionFlood(pod *testpod.Pod, addr string, n int) floodResult {
	var mu sync.Mutex
	var r floodResult
	var wg sync.WaitGroup
	dialFrom(pod, addr, n, func(_ int, c net.Conn, err error) {
		if err != nil {
			mu.Lock()
			r.dialErrs++
			mu.Unlock()
			return
		}
		connected := time.Now()
		wg.Go(func() {
			defer c.Close()
			_ = c.SetReadDeadline(connected.Add(2 * time.Second))
			_, err := c.Read(make([]byte, 1))
			wait := time.Since(connected)
			mu.Lock()
			defer mu.Unlock()
			if err == nil || isTimeout(err) {
				r.open++
				return
			}
			r.refused++
			r.waits = append(r.waits, wait)
			r.maxWait = max(r.maxWait, wait)
		})
	})
	wg.Wait()
	return r
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkOnceASecond checks that the sidecar logged msg at least once and at
// most once a second over the span (plus one), and that the lines held
// back were counted.
func checkOnceASecond(t *testing.T, sc *meshtest.Sidecar, msg string, span time.Duration) {
	t.Helper()
	var lines int
	for _, l := range sc.Logs() {
		if l.Msg == msg {
			lines++
		}
	}
	if most := int(span/time.Second) + 2; lines == 0 || lines > most {
		t.Errorf("%q logged %d times over %v, want 1 to %d (at most once a second)", msg, lines, span, most)
	}
	if !strings.Contains(sc.Proxy.Output(), `"msg":"`+msg+`"`) || !strings.Contains(sc.Proxy.Output(), `"suppressed":`) {
		t.Errorf("%q lines do not say how many were held back", msg)
	}
}
