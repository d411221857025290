package smuggling

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
)

// App is a raw TCP application: it records every byte it receives, per
// connection, and answers each request Go's parser reads from them with
// a fixed 200 (Content-Length: 2, "ok"), closing the connection after a
// request that asks for it or at the first bytes that are no request. It
// is safe for concurrent use; the zero App is ready.
type App struct {
	mu    sync.Mutex
	conns []*bytes.Buffer // by arrival
}

// Serve serves one connection until the client closes it or sends what is
// no request. It does not close c.
func (a *App) Serve(c net.Conn) {
	rec := &bytes.Buffer{}
	a.mu.Lock()
	a.conns = append(a.conns, rec)
	a.mu.Unlock()
	br := bufio.NewReader(io.TeeReader(c, writerFunc(func(p []byte) (int, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return rec.Write(p)
	})))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil || req.Close {
			return
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Mark is a point in what an App received.
type Mark []int

// Mark returns the point the App is at: what it receives from now on is
// Since it.
func (a *App) Mark() Mark {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(Mark, len(a.conns))
	for i, c := range a.conns {
		m[i] = c.Len()
	}
	return m
}

// Since returns what each connection received after m, for the
// connections that received something.
func (a *App) Since(m Mark) [][]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	var got [][]byte
	for i, c := range a.conns {
		b := c.Bytes()
		if i < len(m) {
			b = b[m[i]:]
		}
		if len(b) > 0 {
			got = append(got, bytes.Clone(b))
		}
	}
	return got
}
