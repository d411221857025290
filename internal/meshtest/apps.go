package meshtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// The applications below run in a pod (as root, so their traffic is
// captured) and stop when t's cleanups run.

// ServeEcho listens on addr in pod (":port" is dual-stack). For each
// connection it reads until EOF, then answers "<peer ip>|<what it read>" and
// closes: a client that half-closes gets the answer after its EOF, and the
// answer says whom the application saw.
func ServeEcho(t testpod.Cleaner, pod *testpod.Pod, addr string) {
	t.Helper()
	serve(t, pod, addr, func(c net.Conn) {
		b, err := io.ReadAll(c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s|%s", peerIP(c), b)
	})
}

// ServeHello answers each connection at once with "<peer ip>\n" and closes,
// for clients that cannot half-close.
func ServeHello(t testpod.Cleaner, pod *testpod.Pod, addr string) {
	t.Helper()
	serve(t, pod, addr, func(c net.Conn) { fmt.Fprintf(c, "%s\n", peerIP(c)) })
}

// ServeSink reads until EOF and answers "<bytes> <sha256 hex>".
func ServeSink(t testpod.Cleaner, pod *testpod.Pod, addr string) {
	t.Helper()
	serve(t, pod, addr, func(c net.Conn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
}

func peerIP(c net.Conn) string {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
}

func serve(t testpod.Cleaner, pod *testpod.Pod, addr string, handle func(net.Conn)) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("meshtest: app in %s: %v", pod.Name, err)
	}
	Serve(t, l, handle)
}

// Serve accepts on l until t's cleanups close it, and runs handle for each
// connection in its own goroutine, with a 2-minute deadline, closing the
// connection when handle returns.
func Serve(t testpod.Cleaner, l net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
				handle(c)
			}()
		}
	}()
}

// dial connects from pod as an application and sets a deadline.
func dial(pod *testpod.Pod, addr string, timeout time.Duration) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	return c.(*net.TCPConn), nil
}

// Call connects to an echo server at addr from pod, sends msg, half-closes,
// and returns the peer the server saw and the text it echoed.
func Call(pod *testpod.Pod, addr, msg string) (peer, echoed string, err error) {
	c, err := dial(pod, addr, 10*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, msg); err != nil {
		return "", "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", "", err
	}
	peer, echoed, ok := strings.Cut(string(b), "|")
	if !ok {
		return "", "", fmt.Errorf("answer %q is not peer|text", b)
	}
	return peer, echoed, nil
}

// Send streams size bytes (a repeated 1 MiB pattern; size is rounded up to
// whole MiB) from pod to a sink at addr, and returns what the sink answered
// and what it should have answered.
func Send(pod *testpod.Pod, addr string, size int) (answer, want string, err error) {
	c, err := dial(pod, addr, 2*time.Minute)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>11)
	}
	h := sha256.New()
	sent := 0
	for ; sent < size; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return "", "", err
		}
		h.Write(chunk)
	}
	if err := c.CloseWrite(); err != nil {
		return "", "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", "", err
	}
	return string(b), fmt.Sprintf("%d %s", sent, hex.EncodeToString(h.Sum(nil))), nil
}
