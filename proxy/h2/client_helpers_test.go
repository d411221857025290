package h2

import (
	"bytes"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// rawH2 serves HTTP/2 with raw frames on a local listener, for the
// client's tests of what a well-behaved server would never send: it reads
// the preface, sends empty SETTINGS, acknowledges the client's, and hands
// every other frame to handle with the connection's Framer (frames of one
// connection in order, on its goroutine). It returns the address.
func rawH2(t *testing.T, handle func(fr *http2.Framer, f http2.Frame)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, l, func(c net.Conn) {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, preface); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if sf, ok := f.(*http2.SettingsFrame); ok {
				if !sf.IsAck() {
					_ = fr.WriteSettingsAck()
				}
				continue
			}
			handle(fr, f)
		}
	})
	return l.Addr().String()
}

// headerBlock encodes fields (name, value pairs) as one header block.
func headerBlock(fields ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}
