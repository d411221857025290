// Package sniff tells which protocol a client speaks from its first bytes,
// without consuming them: TLS (a ClientHello), HTTP/2 with prior knowledge
// (the connection preface), HTTP/1.x (a request line), or anything else,
// which the proxy forwards as opaque TCP.
//
// Server-first protocols (SMTP, MySQL, …) send nothing until the server
// speaks, so Read gives up after a time-out and calls the connection opaque;
// ports known to be server-first can skip detection altogether.
package sniff

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

// Protocol is what a connection was detected to carry.
type Protocol uint8

// The protocols Detect tells apart.
const (
	Opaque Protocol = iota // anything else: forwarded byte for byte
	HTTP1                  // an HTTP/1.0 or HTTP/1.1 request line
	HTTP2                  // the HTTP/2 prior-knowledge preface (h2c)
	TLS                    // a TLS ClientHello
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http/1"
	case HTTP2:
		return "h2c"
	case TLS:
		return "tls"
	}
	return "opaque"
}

// MaxPeek is the most Read buffers before it decides: a request line
// longer than this is treated as opaque.
const MaxPeek = 8 << 10

// preface is what an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Detect classifies the first bytes of a client's stream. done is false
// when b is a prefix that could still become more than one answer, so more
// bytes are needed; with done true, p is final.
func Detect(b []byte) (p Protocol, done bool) {
	if len(b) == 0 {
		return Opaque, false
	}
	if b[0] == 0x16 { // TLS record type: handshake
		return detectTLS(b)
	}
	if n := min(len(b), len(preface)); bytes.Equal(b[:n], []byte(preface[:n])) {
		if n == len(preface) {
			return HTTP2, true
		}
		return Opaque, false
	}
	return detectHTTP1(b)
}

// detectTLS looks for a handshake record (0x16), version 3.x, with a
// ClientHello (handshake type 1) as its first message.
func detectTLS(b []byte) (Protocol, bool) {
	if len(b) < 6 {
		if len(b) >= 2 && b[1] != 0x03 {
			return Opaque, true
		}
		return Opaque, false
	}
	if b[1] == 0x03 && b[2] <= 0x04 && b[5] == 0x01 {
		return TLS, true
	}
	return Opaque, true
}

// detectHTTP1 matches "METHOD SP request-target SP HTTP/1.x CRLF", with
// the target in origin form ("/path") or asterisk form ("*").
func detectHTTP1(b []byte) (Protocol, bool) {
	// Method: one or more token characters, then a space.
	i := 0
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	if i == len(b) {
		return Opaque, false // still in the method
	}
	if i == 0 || b[i] != ' ' {
		return Opaque, true
	}
	// Request target: visible characters up to the next space.
	j := i + 1
	for j < len(b) && b[j] > ' ' && b[j] < 0x7f {
		j++
	}
	if j == len(b) {
		return Opaque, false
	}
	if j == i+1 || b[j] != ' ' {
		return Opaque, true
	}
	// A request for a forward proxy (CONNECT host:port, or an absolute URL
	// as target) is for the proxy at the destination to act on as sent:
	// the sidecar must not serve it as an origin request.
	if string(b[:i]) == "CONNECT" || b[i+1] != '/' && b[i+1] != '*' {
		return Opaque, true
	}
	// Version and line end.
	rest := b[j+1:]
	for _, v := range []string{"HTTP/1.1\r\n", "HTTP/1.0\r\n"} {
		n := min(len(rest), len(v))
		if bytes.Equal(rest[:n], []byte(v[:n])) {
			if n == len(v) {
				return HTTP1, true
			}
			return Opaque, false
		}
	}
	return Opaque, true
}

// isTokenChar reports whether c may appear in an HTTP token (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// Result is what Read found.
type Result struct {
	Protocol Protocol
	// Peeked holds the bytes read to decide; the caller must send them on
	// before anything else read from the connection.
	Peeked []byte
	// TimedOut is true when the client sent too little before the time-out
	// (a server-first protocol, or a slow client): Protocol is Opaque.
	TimedOut bool
	// EOF is true when the client shut its write side before Read decided.
	EOF bool
}

// Read reads from c until Detect decides, MaxPeek bytes have come, the
// client half-closes, or timeout passes, and returns what it found. The
// read deadline of c is cleared before Read returns. An error is returned
// only for a failed read (a reset); a time-out or EOF is a Result.
func Read(c net.Conn, timeout time.Duration) (Result, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Result{}, err
	}
	defer c.SetReadDeadline(time.Time{})
	// Most clients decide in their first segment; grow only for long
	// request lines.
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), MaxPeek-len(buf)))
		}
		n, err := c.Read(buf[len(buf):min(cap(buf), MaxPeek)])
		buf = buf[:len(buf)+n]
		if p, done := Detect(buf); done {
			return Result{Protocol: p, Peeked: buf}, nil
		}
		if len(buf) >= MaxPeek {
			return Result{Protocol: Opaque, Peeked: buf}, nil
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			return Result{Protocol: Opaque, Peeked: buf, TimedOut: true}, nil
		case errors.Is(err, io.EOF):
			return Result{Protocol: Opaque, Peeked: buf, EOF: true}, nil
		default:
			return Result{Peeked: buf}, err
		}
	}
}
