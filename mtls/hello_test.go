package mtls_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/mtls"
)

// clientHello returns the first flight of a crypto/tls client offering
// protos: one record holding its ClientHello.
func clientHello(tb testing.TB, protos []string) []byte {
	tb.Helper()
	c := &captureConn{}
	cfg := &tls.Config{ServerName: "example", NextProtos: protos, MinVersion: tls.VersionTLS12}
	_ = tls.Client(c, cfg).Handshake() // ends at its first read
	if len(c.written) == 0 {
		tb.Fatal("the client wrote no ClientHello")
	}
	return c.written
}

// fragment splits the handshake message of one record into records of at
// most size bytes, as a peer may.
func fragment(rec []byte, size int) []byte {
	msg := rec[5:]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, rec[0], rec[1], rec[2], byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// reference is what crypto/tls makes of b: whether it parses a ClientHello
// from it, and whether that offers one of mtls.Protos.
func reference(b []byte) (parsed, mesh bool) {
	stop := errors.New("stop")
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		parsed = true
		for _, p := range h.SupportedProtos {
			mesh = mesh || slices.Contains(mtls.Protos(), p)
		}
		return nil, stop
	}}
	_ = tls.Server(&captureConn{r: bytes.NewReader(b)}, cfg).Handshake()
	return parsed, mesh
}

func TestReadHelloFragmented(t *testing.T) {
	rec := clientHello(t, []string{"x", mtls.ProtoHTTP2})
	for _, size := range []int{1, 2, 3, 4, 5, 100, len(rec)} {
		in := fragment(rec, size)
		mesh, read, err := mtls.ReadHello(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("records of %d bytes: %v", size, err)
		}
		if !mesh {
			t.Errorf("records of %d bytes: the sidecar's ALPN not found", size)
		}
		if !bytes.Equal(read, in) {
			t.Errorf("records of %d bytes: read %d bytes, want all %d", size, len(read), len(in))
		}
	}
}

func TestReadHelloRefuses(t *testing.T) {
	rec := clientHello(t, []string{mtls.ProtoHTTP2})
	huge := slices.Clone(rec[:5])
	huge[3], huge[4] = 0xff, 0xff
	notHello := slices.Clone(rec)
	notHello[5] = 2 // a ServerHello
	for name, in := range map[string][]byte{
		"HTTP":              []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
		"a record too long": huge,
		"another message":   notHello,
		"cut short":         rec[:len(rec)-1],
		"only a header":     rec[:5],
	} {
		_, read, err := mtls.ReadHello(bytes.NewReader(in))
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if !bytes.HasPrefix(in, read) {
			t.Errorf("%s: returned bytes that were not read", name)
		}
	}
}

// FuzzReadHello checks ReadHello against crypto/tls: whatever crypto/tls
// parses as a ClientHello, ReadHello parses too and finds the same answer,
// and what it returns as read is what it read.
func FuzzReadHello(f *testing.F) {
	for _, protos := range [][]string{nil, {mtls.ProtoHTTP2}, {mtls.ProtoTCP}, {"h2", "http/1.1"}, {"a", mtls.ProtoHTTP1}} {
		rec := clientHello(f, protos)
		f.Add(rec)
		f.Add(fragment(rec, 7))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		mesh, read, err := mtls.ReadHello(bytes.NewReader(in))
		if !bytes.HasPrefix(in, read) {
			t.Fatalf("read %q is not a prefix of the input", read)
		}
		parsed, want := reference(in)
		if !parsed {
			return // crypto/tls refuses it; ReadHello may be more lenient
		}
		if err != nil {
			t.Fatalf("crypto/tls parses it, ReadHello: %v", err)
		}
		if mesh != want {
			t.Fatalf("mesh = %v, crypto/tls says %v", mesh, want)
		}
	})
}

// BenchmarkReadHello compares ReadHello with the throw-away crypto/tls
// handshake it replaced (reference does what the old ReadHello did).
func BenchmarkReadHello(b *testing.B) {
	rec := clientHello(b, []string{mtls.ProtoHTTP2})
	b.Run("own", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if mesh, _, err := mtls.ReadHello(bytes.NewReader(rec)); err != nil || !mesh {
				b.Fatal(mesh, err)
			}
		}
	})
	b.Run("crypto-tls", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, mesh := reference(rec); !mesh {
				b.Fatal("not mesh")
			}
		}
	})
}

// captureConn reads from r (EOF when nil) and keeps what is written.
type captureConn struct {
	r       io.Reader
	written []byte
}

func (c *captureConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(p)
}
func (c *captureConn) Write(p []byte) (int, error) {
	c.written = append(c.written, p...)
	return len(p), nil
}
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }
