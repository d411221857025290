package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"time"
)

// errHelloRead stops the handshake ReadHello runs once the ClientHello is
// parsed.
var errHelloRead = errors.New("mtls: ClientHello read")

// ReadHello reads a TLS ClientHello from r and reports whether it offers
// one of the protocols of Protos, that is whether the connection is from a
// peer sidecar. It returns every byte it read, which the caller must hand
// on first (to the real handshake, or to the application). The caller
// bounds the time it takes with a deadline on the connection r reads.
func ReadHello(ctx context.Context, r io.Reader) (mesh bool, read []byte, err error) {
	rec := &recorder{r: r}
	var offered []string
	cfg := &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			offered = h.SupportedProtos
			return nil, errHelloRead
		},
	}
	err = tls.Server(rec, cfg).HandshakeContext(ctx)
	if !errors.Is(err, errHelloRead) {
		return false, rec.buf, err
	}
	for _, p := range offered {
		if slices.Contains(Protos(), p) {
			return true, rec.buf, nil
		}
	}
	return false, rec.buf, nil
}

// recorder is the connection ReadHello's throw-away handshake runs on: it
// reads from r and keeps every byte, and discards what the handshake
// writes (the alert it sends when stopped).
type recorder struct {
	r   io.Reader
	buf []byte
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf = append(c.buf, p[:n]...)
	return n, err
}

func (c *recorder) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recorder) Close() error                     { return nil }
func (c *recorder) LocalAddr() net.Addr              { return recorderAddr{} }
func (c *recorder) RemoteAddr() net.Addr             { return recorderAddr{} }
func (c *recorder) SetDeadline(time.Time) error      { return nil }
func (c *recorder) SetReadDeadline(time.Time) error  { return nil }
func (c *recorder) SetWriteDeadline(time.Time) error { return nil }

type recorderAddr struct{}

func (recorderAddr) Network() string { return "recorder" }
func (recorderAddr) String() string  { return "recorder" }
