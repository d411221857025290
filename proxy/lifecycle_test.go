package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/internal/svidtest"
)

// countingClient is an HTTP client (h2c with prior knowledge when h2c is
// true, else HTTP/1.1 keep-alive) that counts the connections it dials.
func countingClient(h2c bool) (*http.Client, *atomic.Int64) {
	var dials atomic.Int64
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	d := &net.Dialer{}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Protocols: &p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}}, &dials
}

// refused says whether a connection to port is refused.
func refused(port uint16) bool {
	c, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err == nil {
		c.Close()
	}
	return err != nil
}

// TestDrainPeriod: once Run's context ends, the server is not ready at
// once, yet both listeners accept and serve new connections for the drain
// period; inbound HTTP/1.1 answers say Connection: close, an inbound h2c
// connection gets GOAWAY after its answer (the client's next request
// dials anew, and is served), outbound keep-alive is left alone; then the
// listeners refuse, and Run returns.
func TestDrainPeriod(t *testing.T) {
	backend := httpBackend(t)
	cfg := DefaultConfig()
	p := freePorts(t, 2)
	cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
	cfg.DrainPeriod = 700 * time.Millisecond
	cfg.DrainTimeout = 300 * time.Millisecond
	s, err := New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.origDst = fixed(backend)
	stop, done := startRun(t, s)
	url := func(port uint16) string { return fmt.Sprintf("http://127.0.0.1:%d/x", port) }

	h1, _ := countingClient(false)
	h2, h2Dials := countingClient(true)
	out, outDials := countingClient(false)
	for _, c := range []struct {
		c    *http.Client
		port uint16
	}{{h1, cfg.InboundPort}, {h2, cfg.InboundPort}, {out, cfg.OutboundPort}} {
		if res, _ := get(t, c.c, url(c.port), nil); res.StatusCode != 200 || res.Close {
			t.Fatalf("before the drain: %s, Connection: close %v", res.Status, res.Close)
		}
	}
	start := time.Now()
	stop()
	waitFor(t, "DRAINING", func() bool { st, _ := s.State(); return st == StateDraining })
	if _, err := s.State(); err == nil || !strings.Contains(err.Error(), "still accepted") {
		t.Errorf("State during the drain period: %v, want it to say connections are still accepted", err)
	}

	// Inbound HTTP/1.1: the kept-alive connection's answer says close, and
	// so does a new connection's.
	if res, _ := get(t, h1, url(cfg.InboundPort), nil); res.StatusCode != 200 || !res.Close {
		t.Errorf("inbound HTTP/1.1 during the drain period: %s, Connection: close %v; want 200 and close", res.Status, res.Close)
	}
	fresh, _ := countingClient(false)
	if res, _ := get(t, fresh, url(cfg.InboundPort), nil); res.StatusCode != 200 || !res.Close {
		t.Errorf("inbound HTTP/1.1 on a new connection during the drain period: %s, Connection: close %v", res.Status, res.Close)
	}
	// Inbound h2c: the answer comes on the open connection, which then
	// gets GOAWAY: the next request is served on a new one.
	if res, _ := get(t, h2, url(cfg.InboundPort), nil); res.StatusCode != 200 || h2Dials.Load() != 1 {
		t.Errorf("inbound h2c during the drain period: %s after %d dials, want 200 on the open connection", res.Status, h2Dials.Load())
	}
	time.Sleep(50 * time.Millisecond) // the GOAWAY reaches the client
	if res, _ := get(t, h2, url(cfg.InboundPort), nil); res.StatusCode != 200 || h2Dials.Load() != 2 {
		t.Errorf("inbound h2c after GOAWAY: %s after %d dials, want 200 on a second connection", res.Status, h2Dials.Load())
	}
	// Outbound: the application's keep-alive connection is left alone.
	for range 2 {
		if res, _ := get(t, out, url(cfg.OutboundPort), nil); res.StatusCode != 200 || res.Close {
			t.Errorf("outbound during the drain period: %s, Connection: close %v; want 200, kept alive", res.Status, res.Close)
		}
	}
	if n := outDials.Load(); n != 1 {
		t.Errorf("the outbound client dialled %d connections, want its first kept", n)
	}
	if el := time.Since(start); el >= cfg.DrainPeriod {
		t.Fatalf("the checks took %v, longer than the drain period %v: the machine is too slow for this test", el, cfg.DrainPeriod)
	}

	waitFor(t, "listeners closed", func() bool { return refused(cfg.InboundPort) && refused(cfg.OutboundPort) })
	if el := time.Since(start); el < cfg.DrainPeriod {
		t.Errorf("listeners closed %v after the stop, before the drain period %v", el, cfg.DrainPeriod)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the drain period and time-out")
	}
}

// TestQuitSkipsDrainPeriod: Quit closes the listeners at once, whether
// called alone or while a drain period (started by Drain) runs; Drain
// alone keeps them open for the period and then leaves the server DRAINED
// until Run's context ends.
func TestQuitSkipsDrainPeriod(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(s *Server)
	}{
		{"Quit", func(s *Server) { s.Quit() }},
		{"Quit during Drain's period", func(s *Server) {
			s.Drain()
			time.Sleep(100 * time.Millisecond)
			if refused(s.cfg.InboundPort) {
				t.Error("the listener refused during Drain's drain period")
			}
			s.Quit()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			p := freePorts(t, 2)
			cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
			cfg.DrainPeriod = time.Hour
			s, err := New(cfg, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			s.origDst = fixed(echoServer(t))
			_, done := startRun(t, s)
			tc.stop(s)
			waitFor(t, "listeners closed", func() bool { return refused(cfg.InboundPort) && refused(cfg.OutboundPort) })
			waitFor(t, "DRAINED", func() bool { st, _ := s.State(); return st == StateDrained })
			select {
			case err := <-done:
				t.Fatalf("Run returned (%v) before its context ended", err)
			case <-time.After(50 * time.Millisecond):
			}
		})
	}
}

// TestDrainCallKeepsAcceptingForThePeriod: Drain (POST /drain) starts the
// drain period as SIGTERM does, and pillion_draining says so.
func TestDrainCallKeepsAcceptingForThePeriod(t *testing.T) {
	cfg := DefaultConfig()
	p := freePorts(t, 2)
	cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
	cfg.DrainPeriod = 300 * time.Millisecond
	reg := prometheus.NewPedanticRegistry()
	cfg.Registerer = reg
	s, err := New(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.origDst = fixed(echoServer(t))
	startRun(t, s)
	wantSeries(t, reg, "pillion_draining", map[string]float64{"{}": 0})
	start := time.Now()
	s.Drain()
	wantSeries(t, reg, "pillion_draining", map[string]float64{"{}": 1})
	if got, err := roundTrip(t, cfg.OutboundPort, "during"); err != nil || got != "echo:during" {
		t.Errorf("a new connection during Drain's period: %q, %v", got, err)
	}
	waitFor(t, "listeners closed", func() bool { return refused(cfg.InboundPort) })
	if el := time.Since(start); el < cfg.DrainPeriod {
		t.Errorf("listeners closed %v after Drain, before the drain period %v", el, cfg.DrainPeriod)
	}
	waitFor(t, "DRAINED", func() bool { st, _ := s.State(); return st == StateDrained })
}

// startRun starts s.Run on loopback and returns a func that cancels it and
// a channel that receives Run's result.
func startRun(t *testing.T, s *Server) (stop func(), done <-chan error) {
	t.Helper()
	s.bindV4, s.bindV6 = netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan error, 1)
	go func() { d <- s.Run(ctx) }()
	<-s.Ready()
	t.Cleanup(func() { s.Quit(); cancel() })
	return cancel, d
}

func TestDrain(t *testing.T) {
	backend := echoServer(t)
	cfg := DefaultConfig()
	p := freePorts(t, 2)
	cfg.OutboundPort, cfg.InboundPort = p[0], p[1]
	cfg.DrainPeriod = 0 // TestDrainPeriod has one
	cfg.DrainTimeout = 300 * time.Millisecond
	s, _ := New(cfg, zap.NewNop())
	s.origDst = fixed(backend)
	stop, done := startRun(t, s)
	proxyAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cfg.OutboundPort).String()

	// Two connections are open when shutdown starts: one finishes within
	// the drain window, the other never does.
	finisher, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer finisher.Close()
	straggler, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer straggler.Close()
	waitFor(t, "connections active", func() bool { return s.Stats().Dir[Outbound].Active.Load() == 2 })
	start := time.Now()
	stop()

	// New connections are refused at once.
	waitFor(t, "listener closed", func() bool {
		c, err := net.Dial("tcp", proxyAddr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The finisher completes inside the window, untouched.
	time.Sleep(50 * time.Millisecond)
	_ = finisher.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := finisher.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	_ = finisher.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(finisher); err != nil || string(got) != "echo:late" {
		t.Errorf("connection finishing inside the drain window got %q, %v", got, err)
	}

	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the drain time-out")
	}
	if el := time.Since(start); el < cfg.DrainTimeout {
		t.Errorf("Run returned after %v, before the drain time-out %v", el, cfg.DrainTimeout)
	}
	// The straggler is reset, not closed: a cut-off stream must not look complete.
	_ = straggler.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := straggler.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("straggler read = %v, want a reset", err)
	}
}

// TestLifecycleStates: the lifecycle alone, moved on as Run moves it:
// PRE_INITIALIZING until the listeners open, INITIALIZING while the
// identity has no SVID (becomeReady gives up when its context ends), LIVE
// once ready, DRAINING from Drain on (Drain and Quit are idempotent, and
// Quit cuts the drain period short), still DRAINING once the listeners
// closed, then DRAINED.
func TestLifecycleStates(t *testing.T) {
	var l lifecycle
	l.init()
	log := zap.NewNop()
	want := func(id Identity, state, why string) {
		t.Helper()
		got, err := l.state(id)
		if got != state || (why == "" && err != nil) || (why != "" && (err == nil || !strings.Contains(err.Error(), why))) {
			t.Errorf("state = %s, %v; want %s, %q", got, err, state, why)
		}
	}
	want(nil, StatePreInitializing, "listeners not open yet")
	l.listening(nil)
	want(nil, StateInitializing, "starting")

	id := notReady{svidtest.Source{Err: errNotYet}}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan struct{})
	go func() { l.becomeReady(ctx, id, log); close(gaveUp) }()
	want(id, StateInitializing, "no identity")
	cancel()
	<-gaveUp
	select {
	case <-l.ready:
		t.Fatal("ready without an SVID")
	default:
	}
	l.becomeReady(context.Background(), nil, log)
	want(nil, StateLive, "")

	l.requestDrain()
	l.requestDrain()
	l.waitDrain(context.Background(), log) // returns: a drain was requested
	want(nil, StateDraining, "still accepted")
	start := time.Now()
	time.AfterFunc(50*time.Millisecond, func() { l.requestQuit(); l.requestQuit() })
	l.drainPeriod(time.Hour, log)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the drain period lasted %v after Quit", el)
	}
	l.closed.Store(true)
	want(nil, StateDraining, "no longer accepting")
	l.drained.Store(true)
	want(nil, StateDrained, "drained")
}
