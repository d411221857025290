package testpod

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Bounds of Forward.
const (
	// maxForwarded is how many connections one Forward copies at once; one
	// accepted beyond that is closed at once.
	maxForwarded = 256
	// forwardDialTimeout bounds each dial of the target.
	forwardDialTimeout = 5 * time.Second
)

// Forward accepts connections on l until t ends and joins each to a new
// TCP connection to the address to, copying bytes both ways. It dials from
// the test process's own network namespace, so a listener opened with
// Node.Listen (or Pod.Listen) on one side reaches a server on the test's
// loopback on the other: a server on 127.0.0.1:P, forwarded from
// Node.Listen("tcp", "198.18.0.1:P"), is reachable from every pod.
//
// When the target refuses or the dial fails, the accepted connection is
// closed at once, so clients see a stopped target as they would a real
// one. An end of stream is passed on as a half-close; an error in either
// direction closes both connections. At most 256 connections are copied
// at a time (more are closed on accept). At t's cleanup Forward closes l
// and every connection it holds, and waits for its goroutines.
func Forward(t Cleaner, l net.Listener, to string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{
		l: l, to: to, ctx: ctx, log: t.Logf,
		slots: make(chan struct{}, maxForwarded),
		conns: map[net.Conn]struct{}{},
	}
	t.Cleanup(func() {
		cancel()
		l.Close()
		f.closeAll()
		f.wg.Wait()
	})
	f.wg.Add(1)
	go f.accept()
}

// forwarder is one Forward's state.
type forwarder struct {
	l     net.Listener
	to    string
	ctx   context.Context // cancelled at cleanup
	log   func(format string, args ...any)
	slots chan struct{} // one per connection being copied
	wg    sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections, both sides
	closed bool                  // set by closeAll: track no more
}

func (f *forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			if f.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				f.log("testpod: forward to %s: accept: %v", f.to, err)
			}
			return
		}
		select {
		case f.slots <- struct{}{}:
		default:
			f.log("testpod: forward to %s: %d connections already, closing one from %v", f.to, maxForwarded, c.RemoteAddr())
			c.Close()
			continue
		}
		f.wg.Add(1)
		go func() {
			defer func() { <-f.slots; f.wg.Done() }()
			f.join(c)
		}()
	}
}

// join dials the target for c and copies between them until both
// directions end.
func (f *forwarder) join(c net.Conn) {
	if !f.track(c) {
		c.Close()
		return
	}
	defer f.untrack(c)
	d := net.Dialer{Timeout: forwardDialTimeout}
	up, err := d.DialContext(f.ctx, "tcp", f.to)
	if err != nil {
		return // closes c: the client sees the target is gone
	}
	if !f.track(up) {
		up.Close()
		return
	}
	defer f.untrack(up)
	errc := make(chan error, 2)
	go func() { errc <- pipe(up, c) }()
	go func() { errc <- pipe(c, up) }()
	for range 2 {
		if err := <-errc; err != nil {
			c.Close() // unblocks the other direction
			up.Close()
		}
	}
}

// pipe copies src to dst, then half-closes dst (or closes it when it
// cannot be half-closed). It returns the copy's error; nil at src's end
// of stream.
func pipe(dst, src net.Conn) error {
	_, err := io.Copy(dst, src)
	if err != nil {
		return err
	}
	if hc, ok := dst.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return dst.Close()
}

// track records c to be closed at cleanup; false when cleanup has begun.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (f *forwarder) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// closeAll closes every connection and refuses to track new ones.
func (f *forwarder) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
}
