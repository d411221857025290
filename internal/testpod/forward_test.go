package testpod

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/privileged"
)

// lineEcho is a server on the test's loopback that answers each line with
// "<peer ip> <line>". Stop closes it and every connection it holds, as a
// killed process's sockets would be.
type lineEcho struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startLineEcho(t *testing.T) *lineEcho {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &lineEcho{l: l}
	t.Cleanup(e.Stop)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns = append(e.conns, c)
			e.mu.Unlock()
			go func() {
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, peer+" "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return e
}

func (e *lineEcho) Stop() {
	e.l.Close()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.conns {
		c.Close()
	}
}

func TestNodeListenForward(t *testing.T) {
	privileged.Require(t, "ip")
	node := NewNode(t)
	pod := node.AddPod(t, "a")
	if got, want := node.BridgeV4(), netip.MustParseAddr("198.18.0.1"); got != want {
		t.Fatalf("BridgeV4() = %v, want %v", got, want)
	}
	if got, want := node.BridgeV6(), netip.MustParseAddr("fd00:ca7::1"); got != want {
		t.Fatalf("BridgeV6() = %v, want %v", got, want)
	}
	echo := startLineEcho(t)
	l, err := node.Listen("tcp", netip.AddrPortFrom(node.BridgeV4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	Forward(t, l, echo.l.Addr().String())
	front := l.Addr().String()
	if got := l.Addr().(*net.TCPAddr).AddrPort().Addr(); got != node.BridgeV4() {
		t.Fatalf("listener on %v, want the bridge address %v", got, node.BridgeV4())
	}

	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := pod.Dial(ctx, "tcp", front)
		if err != nil {
			t.Fatalf("dial %s from the pod: %v", front, err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}

	// Both ways, twice on one connection: the target sees the forwarder's
	// loopback address, the pod its own line.
	c, r := dial()
	for _, msg := range []string{"one", "two"} {
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read answer to %q: %v", msg, err)
		}
		if want := "127.0.0.1 " + msg + "\n"; line != want {
			t.Fatalf("answer = %q, want %q", line, want)
		}
	}

	// The pod is not reachable on the test's loopback: the listener, not a
	// route, joins them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if c, err := pod.Dial(ctx, "tcp", echo.l.Addr().String()); err == nil {
		c.Close()
		t.Errorf("pod reached the test's loopback %s directly", echo.l.Addr())
	}
	cancel()

	// A stopped target ends the open connection...
	echo.Stop()
	start := time.Now()
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("read after the target stopped: %v, want EOF", err)
	}
	// ...and a new one is closed as soon as it is accepted.
	c2, r2 := dial()
	if _, err := r2.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("read on a connection to a stopped target: %v, want EOF", err)
	}
	c2.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("clients saw the stopped target after %v, want at once", d)
	}
}
