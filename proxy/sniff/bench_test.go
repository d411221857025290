package sniff

import (
	"io"
	"net"
	"testing"
	"time"
)

// requestHead is a typical HTTP/1.1 request head, as a client's first
// segment carries it.
const requestHead = "GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n" +
	"Host: orders.shop.svc.cluster.local:8080\r\n" +
	"User-Agent: Go-http-client/1.1\r\n" +
	"Accept: application/json\r\n" +
	"Accept-Encoding: gzip\r\n" +
	"X-Request-Id: 6f1c1a52-1a2b-4c3d-9e8f-0a1b2c3d4e5f\r\n\r\n"

// BenchmarkSniff measures telling the protocol of a connection: Detect on
// each kind of first segment, and Read on a typical HTTP/1.1 request head
// (the buffer it returns is the connection's).
func BenchmarkSniff(b *testing.B) {
	for _, bb := range []struct {
		name string
		in   string
		want Protocol
	}{
		{"Detect/http1", requestHead, HTTP1},
		{"Detect/h2c", preface + "\x00\x00\x12\x04", HTTP2},
		{"Detect/tls", string(clientHello), TLS},
		{"Detect/opaque", "*1\r\n$4\r\nPING\r\n", Opaque},
	} {
		in := []byte(bb.in)
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if p, done := Detect(in); p != bb.want || !done {
					b.Fatalf("Detect = %v, %v; want %v", p, done, bb.want)
				}
			}
		})
	}
	b.Run("Read/http1", func(b *testing.B) {
		c := &segmentConn{data: []byte(requestHead)}
		b.ReportAllocs()
		for b.Loop() {
			c.off = 0
			r, err := Read(c, time.Second)
			if err != nil || r.Protocol != HTTP1 || len(r.Peeked) != len(requestHead) {
				b.Fatalf("Read = %v (%d bytes), %v; want http/1, all %d bytes", r.Protocol, len(r.Peeked), err, len(requestHead))
			}
		}
	})
}

// segmentConn is a net.Conn whose reads return data, then EOF; the rest of
// net.Conn is the nil embedded interface's, and must not be called.
type segmentConn struct {
	net.Conn
	data []byte
	off  int
}

func (c *segmentConn) Read(p []byte) (int, error) {
	if c.off == len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.off:])
	c.off += n
	return n, nil
}

func (c *segmentConn) SetReadDeadline(time.Time) error { return nil }
