// Package relay copies bytes both ways between two TCP connections, the way
// a transparent proxy must: on the kernel's zero-copy path (splice(2) on
// Linux, which net.TCPConn.ReadFrom uses when both ends are TCP), with
// half-close carried across and a reset or error on either side ending both.
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Result is what one relay did.
type Result struct {
	// Sent is the number of bytes copied from the downstream (the side that
	// connected to us) to the upstream; Received the other way.
	Sent, Received int64
	// Err is the first error that ended the relay early (a reset, a write to
	// a closed peer); nil when both directions ended with a clean EOF.
	Err error
}

// TCP relays between down (the accepted connection) and up (the one we
// dialled) until both directions are done, then closes both. It owns both
// connections from the moment it is called.
//
// When one side shuts its write half (EOF), the other side's write half is
// shut too and the opposite direction carries on: a client may send a
// request, shut down writing and still read the answer. When a direction
// fails (a reset, or writing to a peer that has gone), both connections are
// closed at once, and the side that did not fail is reset rather than
// closed gracefully, so it sees the failure instead of a clean end.
func TCP(down, up *net.TCPConn) Result {
	var (
		wg         sync.WaitGroup
		abortOnce  sync.Once
		sent, recv int64
		errUp      error // down → up
		errDown    error // up → down
	)
	abort := func() {
		abortOnce.Do(func() {
			_ = down.SetLinger(0)
			_ = up.SetLinger(0)
			_ = down.Close()
			_ = up.Close()
		})
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		sent, errUp = pipe(up, down)
		if errUp != nil {
			abort()
		}
	}()
	go func() {
		defer wg.Done()
		recv, errDown = pipe(down, up)
		if errDown != nil {
			abort()
		}
	}()
	wg.Wait()
	_ = down.Close()
	_ = up.Close()
	return Result{Sent: sent, Received: recv, Err: firstReal(errUp, errDown)}
}

// pipe copies src to dst until src's EOF, then shuts dst's write half.
func pipe(dst, src *net.TCPConn) (int64, error) {
	// ReadFrom with a *TCPConn source takes the splice path; io.Copy would
	// prefer src.WriteTo, which for TCP-to-TCP does not.
	n, err := dst.ReadFrom(src)
	if err != nil {
		return n, err
	}
	if err := dst.CloseWrite(); err != nil {
		return n, err
	}
	return n, nil
}

// firstReal returns the first error that is not a consequence of our own
// abort (use of a closed connection).
func firstReal(errs ...error) error {
	var closed error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF):
			if closed == nil {
				closed = err
			}
		default:
			return err
		}
	}
	return closed
}
