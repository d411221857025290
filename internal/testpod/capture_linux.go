package testpod

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Capture records the TCP segments crossing the node namespace (every
// packet between pods passes its veth ends), as tcpdump on the node would.
type Capture struct {
	fd      int // set before the reading goroutine starts; closed by it
	stopped atomic.Bool
	done    chan struct{}

	mu   sync.Mutex
	segs []Segment
}

// Segment is one captured TCP segment that carried data.
type Segment struct {
	SrcPort, DstPort uint16
	Payload          []byte
}

// Capture starts recording; it stops when the test ends or Stop is called.
func (n *Node) Capture(t Cleaner) *Capture {
	t.Helper()
	c := &Capture{fd: -1, done: make(chan struct{})}
	err := inNetNS(filepath.Join(nsDir, n.name), func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.fd = fd
		// A receive time-out lets Stop end the reading loop.
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("testpod: capture on %s: %v", n.name, err)
	}
	go c.read()
	t.Cleanup(c.Stop)
	return c
}

func (c *Capture) read() {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 1<<16)
	for !c.stopped.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // the receive time-out: look at stopped again
		}
		if err != nil {
			return
		}
		if seg, ok := parseTCP(buf[:n]); ok {
			c.mu.Lock()
			c.segs = append(c.segs, seg)
			c.mu.Unlock()
		}
	}
}

// Stop ends the capture (within the socket's 100 ms receive time-out).
// It is idempotent.
func (c *Capture) Stop() {
	c.stopped.Store(true)
	<-c.done
}

// Segments returns the data-carrying TCP segments from or to port so far.
func (c *Capture) Segments(port uint16) []Segment {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Segment
	for _, s := range c.segs {
		if s.SrcPort == port || s.DstPort == port {
			out = append(out, s)
		}
	}
	return out
}

// parseTCP finds the TCP payload in an Ethernet frame carrying IPv4 or
// IPv6 (without extension headers).
func parseTCP(f []byte) (Segment, bool) {
	if len(f) < 14 {
		return Segment{}, false
	}
	ip := f[14:]
	var tcp []byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case unix.ETH_P_IP:
		if len(ip) < 20 || ip[9] != unix.IPPROTO_TCP {
			return Segment{}, false
		}
		ihl, total := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:4]))
		if total > len(ip) || ihl > total {
			return Segment{}, false
		}
		tcp = ip[ihl:total]
	case unix.ETH_P_IPV6:
		if len(ip) < 40 || ip[6] != unix.IPPROTO_TCP {
			return Segment{}, false
		}
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		if 40+plen > len(ip) {
			return Segment{}, false
		}
		tcp = ip[40 : 40+plen]
	default:
		return Segment{}, false
	}
	if len(tcp) < 20 {
		return Segment{}, false
	}
	off := int(tcp[12]>>4) * 4
	if off > len(tcp) || off == len(tcp) {
		return Segment{}, false
	}
	return Segment{
		SrcPort: binary.BigEndian.Uint16(tcp[0:2]),
		DstPort: binary.BigEndian.Uint16(tcp[2:4]),
		Payload: append([]byte(nil), tcp[off:]...),
	}, true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
