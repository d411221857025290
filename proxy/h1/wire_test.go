package h1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// trailerBody fills its request's trailers when it ends, as the inbound
// server fills the map the router passes on.
type trailerBody struct {
	io.Reader
	trailer http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		b.trailer.Set("X-Sum", "42")
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// A chunked request's trailers, known only at its body's end, arrive.
func TestChunkedRequestTrailers(t *testing.T) {
	addr, _ := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, strings.Join(r.TransferEncoding, ",")+" "+string(b)+" "+r.Trailer.Get("X-Sum"))
	})
	tr := newTransport(t)
	for _, name := range []string{"streamed", "complete"} {
		t.Run(name, func(t *testing.T) {
			req := newRequest(t, context.Background(), "POST", addr, nil)
			req.Trailer = http.Header{"X-Sum": nil}
			req.ContentLength = -1
			if name == "streamed" {
				pr, pw := io.Pipe()
				go func() {
					_, _ = io.WriteString(pw, "part one, ")
					time.Sleep(10 * time.Millisecond)
					_, _ = io.WriteString(pw, "part two")
					pw.Close()
				}()
				req.Body = &trailerBody{Reader: pr, trailer: req.Trailer}
			} else {
				req.Trailer.Set("X-Sum", "42") // arrived with the body
				req.Body = newCompleteBody("part one, part two")
			}
			if _, got := do(t, tr, req); got != "chunked part one, part two 42" {
				t.Errorf("server saw %q, want the chunked body and its trailer", got)
			}
		})
	}
}

// A chunked response's trailers are in res.Trailer at the body's end.
func TestResponseTrailers(t *testing.T) {
	addr, conns := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "abc")
	})
	tr := newTransport(t)
	for range 2 {
		res, got := do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
		if got != "body" || res.Trailer.Get("X-Checksum") != "abc" {
			t.Errorf("body %q, trailer %v; want body and X-Checksum: abc", got, res.Trailer)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: the connection is reused after the trailers", n)
	}
}

// Responses without a body (to HEAD, 204, 304) are framed as such, though
// they announce a length: the connection then carries the next request.
func TestBodylessResponses(t *testing.T) {
	addr, conns := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/head", "/304":
				code := map[string]string{"/head": "200 OK", "/304": "304 Not Modified"}[req.URL.Path]
				_, _ = io.WriteString(c, "HTTP/1.1 "+code+"\r\nContent-Length: 10\r\n\r\n")
			case "/204":
				_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			default:
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
			}
		}
	})
	tr := newTransport(t)
	for _, tc := range []struct{ method, path string }{{"HEAD", "/head"}, {"GET", "/204"}, {"GET", "/304"}} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		// Closed unread: a bodyless response gave its connection back
		// already.
		res.Body.Close()
		if _, got := do(t, tr, newRequest(t, context.Background(), "GET", addr, nil)); got != "next" {
			t.Fatalf("after %s %s: %q, want the next response", tc.method, tc.path, got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// "Expect: 100-continue": the body waits for the server's 100; a final
// answer instead means it is never sent, and the connection not reused.
func TestExpectContinue(t *testing.T) {
	for _, tc := range []struct {
		answer, wantBody string
		wantCode         int
	}{
		{"HTTP/1.1 100 Continue\r\n\r\n", "payload", 200},
		{"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n", "", 417},
	} {
		t.Run(tc.answer[9:12], func(t *testing.T) {
			noLeaks(t)
			got := make(chan string, 2)
			addr, conns := rawServer(t, func(c net.Conn) {
				if _, err := readHead(c); err != nil {
					return
				}
				// Nothing of the body before the answer.
				_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				var b [1]byte
				if n, _ := c.Read(b[:]); n > 0 {
					got <- "early body"
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				_, _ = io.WriteString(c, tc.answer)
				if tc.wantCode != 200 {
					n, _ := c.Read(b[:]) // the deadline, or a close
					got <- string(b[:n])
					return
				}
				body := make([]byte, len(tc.wantBody))
				_, _ = io.ReadFull(c, body)
				got <- string(body)
				for {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
					if _, err := readHead(c); err != nil {
						return
					}
				}
			})
			tr := newTransport(t)
			req := newRequest(t, context.Background(), "PUT", addr, newCompleteBody("payload"))
			req.ContentLength = 7
			req.Header.Set("Expect", "100-continue")
			res, _ := do(t, tr, req)
			if res.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", res.StatusCode, tc.wantCode)
			}
			if g := <-got; g != tc.wantBody {
				t.Errorf("server read %q after its answer, want %q", g, tc.wantBody)
			}
			do(t, tr, newRequest(t, context.Background(), "GET", addr, nil))
			want := int64(1)
			if tc.wantCode != 200 {
				want = 2
			}
			if n := conns.Load(); n != want {
				t.Errorf("%d connections, want %d", n, want)
			}
		})
	}
}

// Informational answers (103 Early Hints) reach the trace; the final
// answer follows.
func TestInformationalResponses(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, err := readHead(c); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, http.StatusText(code)+" "+h.Get("Link"))
		return nil
	}}
	ctx := httptrace.WithClientTrace(context.Background(), trace)
	res, got := do(t, newTransport(t), newRequest(t, ctx, "GET", addr, nil))
	if res.StatusCode != 200 || got != "ok" {
		t.Errorf("final answer %d %q, want 200 ok", res.StatusCode, got)
	}
	want := "Early Hints </a.css>; rel=preload|Early Hints </b.js>; rel=preload"
	if g := strings.Join(hints, "|"); g != want {
		t.Errorf("1xx seen: %q, want %q", g, want)
	}
}

// A 101's body is the connection, bytes already buffered first; it has
// left the pool.
func TestUpgrade(t *testing.T) {
	noLeaks(t)
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, err := readHead(c); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello ")
		_, _ = io.Copy(c, c)
	})
	tr := newTransport(t)
	tr.MaxConnsPerHost = 1
	req := newRequest(t, context.Background(), "GET", addr, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if res.StatusCode != 101 || !ok {
		t.Fatalf("status %d, body %T; want 101 and an io.ReadWriteCloser", res.StatusCode, res.Body)
	}
	defer rwc.Close()
	if _, err := io.WriteString(rwc, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("hello ping"))
	if _, err := io.ReadFull(rwc, buf); err != nil || string(buf) != "hello ping" {
		t.Fatalf("read %q, %v; want the buffered bytes then the echo", buf, err)
	}
	// Out of the pool: MaxConnsPerHost does not count it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := tr.getConn(ctx, addr)
	if err != nil {
		t.Fatalf("another connection under a cap of 1: %v", err)
	}
	c.close()
}
