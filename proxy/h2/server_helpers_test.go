package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serve serves s on a local listener, each accepted connection wrapped
// by wrap when not nil, until the test ends; it returns the address.
func serve(t *testing.T, s *Server, wrap func(net.Conn) net.Conn) string {
	t.Helper()
	return serveCtx(t, s, context.Background(), wrap)
}

// serveCtx is serve, with ctx given to ServeConn.
func serveCtx(t *testing.T, s *Server, ctx context.Context, wrap func(net.Conn) net.Conn) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if wrap != nil {
				nc = wrap(nc)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.ServeConn(ctx, nc)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		wg.Wait()
	})
	return ln.Addr().String()
}

// h2cClient is net/http's HTTP/2 client (x/net's http2.Transport,
// bundled; the x/net type is deprecated in its favour) speaking h2c with
// prior knowledge.
func h2cClient(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawClient speaks frames to a Server, for what x/net's client hides.
type rawClient struct {
	t    *testing.T
	nc   net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

// dialRaw connects, sends the preface and empty SETTINGS, and reads the
// server's SETTINGS.
func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	rc := &rawClient{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if sf, ok := rc.next().(*http2.SettingsFrame); !ok || sf.IsAck() {
		t.Fatalf("first frame %v, want SETTINGS", sf)
	}
	return rc
}

// headers sends a header block (name, value pairs) on stream id.
func (rc *rawClient) headers(id uint32, end bool, fields ...string) {
	rc.t.Helper()
	rc.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = rc.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: end, EndHeaders: true})
	if err != nil {
		rc.t.Fatal(err)
	}
}

// get sends a GET of path on stream id.
func (rc *rawClient) get(id uint32, path string) {
	rc.headers(id, true, ":method", "GET", ":scheme", "http", ":authority", "test", ":path", path)
}

// next reads the next frame other than SETTINGS (acknowledged), its ACK,
// PING and WINDOW_UPDATE; nil at EOF.
func (rc *rawClient) next() http2.Frame {
	rc.t.Helper()
	for {
		f, err := rc.read(5 * time.Second)
		if err != nil {
			if isEOF(err) {
				return nil
			}
			rc.t.Fatalf("reading a frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = rc.fr.WriteSettingsAck()
				return f
			}
		case *http2.WindowUpdateFrame, *http2.PingFrame:
		default:
			return f
		}
	}
}

func (rc *rawClient) read(d time.Duration) (http2.Frame, error) {
	_ = rc.nc.SetReadDeadline(time.Now().Add(d))
	return rc.fr.ReadFrame()
}

func isEOF(err error) bool {
	var ne *net.OpError
	return errors.Is(err, io.EOF) || errors.As(err, &ne) && !ne.Timeout()
}

// field is the value of name in a header block.
func field(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}
