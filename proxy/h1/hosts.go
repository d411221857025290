package h1

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"time"
)

// host is the connections to one address. Its fields are guarded by the
// Transport's mu.
type host struct {
	addr string
	idle []*conn // last in, first out: the warmest connection is reused
	n    int     // connections open or being dialled
	// waiters are the requests waiting for a connection under
	// MaxConnsPerHost, oldest first; each is woken once, by a send.
	waiters []chan struct{}
}

// wakeOne tells the oldest waiter to try again.
func (h *host) wakeOne() {
	if len(h.waiters) > 0 {
		h.waiters[0] <- struct{}{}
		h.waiters = slices.Delete(h.waiters, 0, 1)
	}
}

// getConn returns an idle connection to addr, or a new one, waiting under
// MaxConnsPerHost. An idle connection is checked for the server's close,
// or bytes it sent unasked, before it is returned.
func (t *Transport) getConn(ctx context.Context, addr string) (*conn, error) {
	for {
		t.mu.Lock()
		h := t.hosts[addr]
		if h == nil {
			if t.hosts == nil {
				t.hosts = make(map[string]*host)
			}
			h = &host{addr: addr}
			t.hosts[addr] = h
		}
		if n := len(h.idle); n > 0 {
			c := h.idle[n-1]
			h.idle[n-1] = nil
			h.idle = h.idle[:n-1]
			c.idle = false
			if c.timer != nil {
				c.timer.Stop()
			}
			t.mu.Unlock()
			if !alive(c.nc) {
				c.close()
				continue
			}
			return c, nil
		}
		if t.MaxConnsPerHost <= 0 || h.n < t.MaxConnsPerHost {
			h.n++
			t.mu.Unlock()
			return t.dial(ctx, h)
		}
		wake := make(chan struct{}, 1)
		h.waiters = append(h.waiters, wake)
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			t.mu.Lock()
			if i := slices.Index(h.waiters, wake); i >= 0 {
				h.waiters = slices.Delete(h.waiters, i, i+1)
			} else {
				h.wakeOne() // woken as the context ended: the turn passes on
			}
			t.forget(h)
			t.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func (t *Transport) dial(ctx context.Context, h *host) (*conn, error) {
	dial := t.Dial
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, h.addr)
	if err != nil {
		t.release(h)
		return nil, fmt.Errorf("h1: dial %s: %w", h.addr, err)
	}
	c := &conn{t: t, h: h, nc: nc}
	c.lr = limitReader{r: nc, n: unlimited}
	c.br = bufio.NewReaderSize(&c.lr, orDefault(t.ReadBufferSize, DefaultBufferSize))
	return c, nil
}

// release counts one connection of h less, closed or gone from the pool,
// and lets a waiter dial.
func (t *Transport) release(h *host) {
	t.mu.Lock()
	h.n--
	h.wakeOne()
	t.forget(h)
	t.mu.Unlock()
}

// forget drops h from the map when nothing holds it; t.mu must be held.
func (t *Transport) forget(h *host) {
	if h.n == 0 && len(h.waiters) == 0 && t.hosts[h.addr] == h {
		delete(t.hosts, h.addr)
	}
}

// putIdle keeps c for the next request to its address, or closes it when
// the address has enough idle ones.
func (t *Transport) putIdle(c *conn) {
	t.mu.Lock()
	h := c.h
	if len(h.idle) >= orDefault(t.MaxIdlePerHost, DefaultMaxIdlePerHost) || c.br.Buffered() > 0 {
		t.mu.Unlock()
		c.close() // bytes nobody asked for: the server is not speaking HTTP/1.1 as we think
		return
	}
	c.idle, c.reused = true, true
	h.idle = append(h.idle, c)
	if t.IdleTimeout > 0 {
		c.idleSince = time.Now()
		if c.timer == nil {
			c.timer = time.AfterFunc(t.IdleTimeout, c.idleExpired)
		} else {
			c.timer.Reset(t.IdleTimeout)
		}
	}
	h.wakeOne()
	t.mu.Unlock()
}

// idleExpired closes c if it is still idle and has been for IdleTimeout.
// The timer may have fired for an earlier idle spell; then it is set
// again for what is left of this one.
func (c *conn) idleExpired() {
	t := c.t
	t.mu.Lock()
	if !c.idle {
		t.mu.Unlock()
		return
	}
	if left := t.IdleTimeout - time.Since(c.idleSince); left > 0 {
		c.timer.Reset(left)
		t.mu.Unlock()
		return
	}
	h := c.h
	if i := slices.Index(h.idle, c); i >= 0 {
		h.idle = slices.Delete(h.idle, i, i+1)
	}
	c.idle = false
	t.mu.Unlock()
	c.close()
}
