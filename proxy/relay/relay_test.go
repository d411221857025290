package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/proxy/bufpool"
)

// setup returns the client's end and the server's end of a connection that
// runs through TCP(), and a channel with the relay's result.
func setup(t *testing.T) (client, server *net.TCPConn, result <-chan Result) {
	return setupIdle(t, 0)
}

// setupIdle is setup with an idle time-out on the relay.
func setupIdle(t *testing.T, idle time.Duration) (client, server *net.TCPConn, result <-chan Result) {
	t.Helper()
	return setupRelay(t, idle, false, nil)
}

// notTCP is a TCP connection the relay does not see as one, as a TLS one:
// it copies through its own buffers rather than splice(2).
type notTCP struct{ *net.TCPConn }

// setupRelay is setupIdle whose relay sees its downstream end as notTCP
// when buffered is true, and reports to p.
func setupRelay(t *testing.T, idle time.Duration, buffered bool, p *Progress) (client, server *net.TCPConn, result <-chan Result) {
	t.Helper()
	front := listen(t)
	back := listen(t)
	res := make(chan Result, 1)
	go func() {
		down, err := front.AcceptTCP()
		if err != nil {
			return
		}
		up, err := net.DialTCP("tcp", nil, back.Addr().(*net.TCPAddr))
		if err != nil {
			down.Close()
			return
		}
		var d Conn = down
		if buffered {
			d = notTCP{down}
		}
		res <- TCP(d, up, idle, new(bufpool.Pool), p)
	}()
	c, err := net.DialTCP("tcp", nil, front.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := back.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	deadline := time.Now().Add(20 * time.Second)
	_ = c.SetDeadline(deadline)
	_ = s.SetDeadline(deadline)
	return c, s, res
}

func listen(t *testing.T) *net.TCPListener {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func waitResult(t *testing.T, res <-chan Result) Result {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not finish")
		return Result{}
	}
}

func TestHalfCloseCarriedAcross(t *testing.T) {
	client, server, res := setup(t)
	if _, err := client.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The server sees the client's EOF only if the half-close was carried.
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	if string(got) != "question" {
		t.Fatalf("server got %q", got)
	}
	// ...and can still answer after it.
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	server.Close()
	answer, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	if string(answer) != "answer" {
		t.Fatalf("client got %q", answer)
	}
	r := waitResult(t, res)
	if r.Sent != 8 || r.Received != 6 || r.Err != nil {
		t.Errorf("result = %+v, want Sent 8, Received 6, no error", r)
	}
}

func TestLargeTransferBothWays(t *testing.T) {
	t.Run("spliced", func(t *testing.T) { testLargeTransferBothWays(t, false) })
	t.Run("buffered", func(t *testing.T) { testLargeTransferBothWays(t, true) })
}

func testLargeTransferBothWays(t *testing.T, buffered bool) {
	// With an idle limit, as the proxy runs it: reads carry deadlines.
	client, server, res := setupRelay(t, time.Minute, buffered, nil)
	const size = 32 << 20
	data := make([]byte, size)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)
	// The server echoes everything back; the client writes and reads at once.
	go func() {
		_, _ = io.Copy(server, server)
		server.CloseWrite()
	}()
	go func() {
		_, _ = client.Write(data)
		client.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, client)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo returned %d bytes with a different checksum", n)
	}
	r := waitResult(t, res)
	if r.Sent != size || r.Received != size || r.Err != nil {
		t.Errorf("result = %+v, want %d each way, no error", r, size)
	}
}

func TestResetEndsBothSides(t *testing.T) {
	client, server, res := setup(t)
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// The server aborts: the client must see a reset, not a clean EOF.
	_ = server.SetLinger(0)
	server.Close()
	_, err := client.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after server reset = %v, want ECONNRESET", err)
	}
	if r := waitResult(t, res); r.Err == nil {
		t.Errorf("result error = nil, want the reset")
	}
}

func TestClientGoneWhileServerSends(t *testing.T) {
	client, server, res := setup(t)
	client.Close()
	// The server keeps writing; once the relay notices the client is gone it
	// must close the server's side too, so the writes fail.
	buf := make([]byte, 64<<10)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = server.Write(buf)
	}
	if err == nil {
		t.Fatal("server could keep writing after the client closed")
	}
	waitResult(t, res)
}

func TestServerClosesFirstClientKeepsSending(t *testing.T) {
	client, server, res := setup(t)
	// The server says its piece and shuts its write side at once...
	if _, err := server.Write([]byte("banner")); err != nil {
		t.Fatal(err)
	}
	if err := server.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "banner" {
		t.Fatalf("client read %q, %v; want the banner then EOF", got, err)
	}
	// ...while the client can still send, and the server still receives.
	if _, err := client.Write([]byte("late data")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	rest, err := io.ReadAll(server)
	if err != nil || string(rest) != "late data" {
		t.Fatalf("server read %q, %v; want the client's data after its own FIN", rest, err)
	}
	if r := waitResult(t, res); r.Err != nil || r.Sent != 9 || r.Received != 6 {
		t.Errorf("result = %+v", r)
	}
}

func TestIdleHalfClosedConnectionIsReset(t *testing.T) {
	t.Run("spliced", func(t *testing.T) { testIdleHalfClosedConnectionIsReset(t, false) })
	t.Run("buffered", func(t *testing.T) { testIdleHalfClosedConnectionIsReset(t, true) })
}

func testIdleHalfClosedConnectionIsReset(t *testing.T, buffered bool) {
	const idle = 100 * time.Millisecond
	client, server, res := setupRelay(t, idle, buffered, nil)
	start := time.Now()
	// The client is done sending; the server never answers.
	client.CloseWrite()
	if _, err := io.ReadAll(server); err != nil {
		t.Fatal(err)
	}
	r := waitResult(t, res)
	el := time.Since(start)
	if !errors.Is(r.Err, ErrIdle) {
		t.Errorf("result error = %v, want ErrIdle", r.Err)
	}
	if el < idle || el > 3*idle {
		t.Errorf("relay ended after %v, want between %v and %v", el, idle, 3*idle)
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read after the idle cut = %v, want a reset", err)
	}
}

func TestSlowSteadyTransferIsNotIdle(t *testing.T) {
	const idle = 100 * time.Millisecond
	client, server, res := setupIdle(t, idle)
	// A byte every 30 ms for about six idle periods.
	go func() {
		for range 20 {
			if _, err := client.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(30 * time.Millisecond)
		}
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || len(got) != 20 {
		t.Fatalf("server read %d bytes, %v; want all 20", len(got), err)
	}
	server.CloseWrite()
	if r := waitResult(t, res); r.Err != nil {
		t.Errorf("a slow but steady transfer was cut: %v", r.Err)
	}
}

// scriptedConn reads the given chunks, one per Read (a chunk longer than
// the buffer takes several), then EOF; it records the size of each Read's
// buffer and what is written. It is a Conn that is not a *net.TCPConn.
type scriptedConn struct {
	net.Conn // nil: only Read, Write and CloseWrite are used
	chunks   [][]byte
	reads    []int
	wrote    []byte
}

func (c *scriptedConn) Read(p []byte) (int, error) {
	c.reads = append(c.reads, len(p))
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func (c *scriptedConn) Write(p []byte) (int, error) {
	c.wrote = append(c.wrote, p...)
	return len(p), nil
}
func (c *scriptedConn) CloseWrite() error { return nil }

// TestBufferedCopyHoldsABigBufferOnlyWhileStreaming: a quiet connection
// reads with its small buffer; a read that fills it switches to the 32 KiB
// one, which goes back once a read is small again; every byte arrives in
// order.
func TestBufferedCopyHoldsABigBufferOnlyWhileStreaming(t *testing.T) {
	stream := bytes.Repeat([]byte("0123456789abcdef"), 3*bufpool.Size/16)
	src := &scriptedConn{chunks: [][]byte{[]byte("hello"), stream, []byte("bye")}}
	dst := &scriptedConn{}
	c := &bufferedCopy{dst: dst, src: src, bufs: new(bufpool.Pool)}
	n, err := c.copy()
	if want := "hello" + string(stream) + "bye"; err != nil || n != int64(len(want)) || string(dst.wrote) != want {
		t.Fatalf("copied %d (want %d), %v; the bytes written differ: %v", n, len(want), err, string(dst.wrote) != want)
	}
	// hello (small), the stream's first 2 KiB (small: fills it), then
	// 32 KiB reads, "bye" (big: too small, released), EOF (small).
	small, big := smallBufSize, bufpool.Size
	if r := src.reads; len(r) < 5 || r[0] != small || r[1] != small || r[2] != big || r[len(r)-2] != big || r[len(r)-1] != small {
		t.Errorf("read buffer sizes %v", r)
	}
	if c.big != nil {
		t.Error("the big buffer is still held after the stream ended")
	}
}

// TestProgressWhileStreaming: a long connection's bytes are reported while
// it runs, spliced (every Progress.Every, though no idle time-out wakes the
// copy) and buffered (as written), and in all exactly what Result counts.
func TestProgressWhileStreaming(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(map[bool]string{false: "spliced", true: "buffered"}[buffered], func(t *testing.T) {
			var up, down atomic.Int64
			p := &Progress{Every: 20 * time.Millisecond,
				Up: func(n int64) { up.Add(n) }, Down: func(n int64) { down.Add(n) }}
			client, server, res := setupRelay(t, 0, buffered, p)
			if _, err := client.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(server, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if _, err := server.Write(make([]byte, 300)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(client, make([]byte, 300)); err != nil {
				t.Fatal(err)
			}
			// Both still open: the bytes must be reported before the end.
			deadline := time.Now().Add(5 * time.Second)
			for up.Load() != 1000 || down.Load() != 300 {
				if time.Now().After(deadline) {
					t.Fatalf("while open: reported %d up, %d down; want 1000, 300", up.Load(), down.Load())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := client.Write(make([]byte, 24)); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			if _, err := io.Copy(io.Discard, server); err != nil {
				t.Fatal(err)
			}
			server.CloseWrite()
			r := <-res
			if r.Sent != 1024 || r.Received != 300 {
				t.Fatalf("Result = %+v, want 1024 sent, 300 received", r)
			}
			if up.Load() != r.Sent || down.Load() != r.Received {
				t.Errorf("reported %d up, %d down; Result says %d, %d", up.Load(), down.Load(), r.Sent, r.Received)
			}
		})
	}
}
