package sniff

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// clientHello is the start of a real TLS 1.2/1.3 ClientHello record.
var clientHello = []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}

func TestDetect(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		p    Protocol
		done bool
	}{
		{"empty", "", Opaque, false},
		{"GET", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", HTTP1, true},
		{"HTTP/1.0", "GET /index.html HTTP/1.0\r\n", HTTP1, true},
		{"extension method", "PROPFIND /dav HTTP/1.1\r\n", HTTP1, true},
		{"asterisk form", "OPTIONS * HTTP/1.1\r\n", HTTP1, true},
		// Requests for a forward proxy are the proxy's to act on: opaque.
		{"absolute form", "GET http://b:8080/x?y=1 HTTP/1.1\r\n", Opaque, true},
		{"CONNECT", "CONNECT b:443 HTTP/1.1\r\n", Opaque, true},
		{"partial method", "GE", Opaque, false},
		{"partial target", "GET /long/pa", Opaque, false},
		{"partial version", "GET / HTTP/1", Opaque, false},
		{"no CRLF yet", "GET / HTTP/1.1", Opaque, false},
		{"HTTP/0.9 style", "GET /\r\n", Opaque, true},
		{"HTTP/2.0 request line is not h1", "GET / HTTP/2.0\r\n", Opaque, true},
		{"lowercase version", "GET / http/1.1\r\n", Opaque, true},
		{"two spaces", "GET  / HTTP/1.1\r\n", Opaque, true},
		{"bare LF", "GET / HTTP/1.1\n", Opaque, true},
		{"h2 preface", preface + "\x00\x00\x12\x04", HTTP2, true},
		{"h2 preface exactly", preface, HTTP2, true},
		{"partial preface", "PRI * HTTP/2.0\r\n", Opaque, false},
		{"PRI as an h1 method", "PRI /x HTTP/1.1\r\n", HTTP1, true},
		{"TLS ClientHello", string(clientHello), TLS, true},
		{"partial TLS", "\x16\x03\x01", Opaque, false},
		{"TLS record, not a hello", "\x16\x03\x01\x00\x10\x02", Opaque, true},
		{"0x16 then junk", "\x16\x07", Opaque, true},
		{"SSH banner", "SSH-2.0-OpenSSH_9.2\r\n", Opaque, true},
		{"redis RESP", "*1\r\n$4\r\nPING\r\n", Opaque, true},
		{"binary", "\x00\x01\x02", Opaque, true},
		{"client-first text", "question", Opaque, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, done := Detect([]byte(tt.in))
			if p != tt.p || done != tt.done {
				t.Errorf("Detect(%q) = %v, %v; want %v, %v", tt.in, p, done, tt.p, tt.done)
			}
		})
	}
}

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestRead(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, tt := range []struct {
		name   string
		chunks []string // written with a pause between them
		close  bool     // client half-closes after writing
		want   Result
	}{
		{"request line in one segment", []string{"GET / HTTP/1.1\r\nHost: b\r\n\r\n"}, false,
			Result{Protocol: HTTP1, Peeked: []byte("GET / HTTP/1.1\r\nHost: b\r\n\r\n")}},
		{"request line in pieces", []string{"GE", "T /x HT", "TP/1.1\r\n"}, false,
			Result{Protocol: HTTP1, Peeked: []byte("GET /x HTTP/1.1\r\n")}},
		{"preface in pieces", []string{preface[:5], preface[5:]}, false,
			Result{Protocol: HTTP2, Peeked: []byte(preface)}},
		{"server-first: nothing sent", nil, false, Result{Protocol: Opaque, TimedOut: true, Peeked: []byte{}}},
		{"slow undecided client", []string{"GET /"}, false,
			Result{Protocol: Opaque, TimedOut: true, Peeked: []byte("GET /")}},
		{"client half-closes early", []string{"question"}, true,
			Result{Protocol: Opaque, EOF: true, Peeked: []byte("question")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, server := pair(t)
			go func() {
				for _, c := range tt.chunks {
					_, _ = io.WriteString(client, c)
					time.Sleep(10 * time.Millisecond)
				}
				if tt.close {
					client.(*net.TCPConn).CloseWrite()
				}
			}()
			got, err := Read(server, timeout)
			if err != nil {
				t.Fatal(err)
			}
			if got.Protocol != tt.want.Protocol || got.TimedOut != tt.want.TimedOut || got.EOF != tt.want.EOF ||
				!bytes.Equal(got.Peeked, tt.want.Peeked) {
				t.Errorf("Read = %+v (peeked %q), want %+v (peeked %q)", got, got.Peeked, tt.want, tt.want.Peeked)
			}
			// The deadline is cleared: a later read waits for data, not the time-out.
			go func() { time.Sleep(2 * timeout); _, _ = client.Write([]byte("!")) }()
			b := make([]byte, 1)
			if tt.close {
				return
			}
			if _, err := server.Read(b); err != nil {
				t.Errorf("read after Read: %v (deadline left set?)", err)
			}
		})
	}
}

func TestReadGivesUpAtMaxPeek(t *testing.T) {
	client, server := pair(t)
	long := "GET /" + string(bytes.Repeat([]byte("a"), 2*MaxPeek))
	go io.WriteString(client, long)
	got, err := Read(server, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got.Protocol != Opaque || got.TimedOut || len(got.Peeked) != MaxPeek || string(got.Peeked) != long[:MaxPeek] {
		t.Errorf("Read = %v, timed out %v, %d bytes; want opaque after exactly %d bytes", got.Protocol, got.TimedOut, len(got.Peeked), MaxPeek)
	}
}

// FuzzDetect: Detect never panics, and a decision never changes when more
// bytes arrive, so deciding early loses nothing.
func FuzzDetect(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", preface, string(clientHello), "SSH-2.0-x\r\n", "", "\x16\x03"} {
		f.Add([]byte(s), uint(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, k uint) {
		full, fullDone := Detect(b)
		cut := int(k % uint(len(b)+1))
		p, done := Detect(b[:cut])
		if done && (!fullDone || p != full) {
			t.Fatalf("Detect(%q) = %v (decided) but Detect(%q) = %v, %v", b[:cut], p, b, full, fullDone)
		}
		if !fullDone && full != Opaque {
			t.Fatalf("undecided Detect(%q) returned %v, want Opaque", b, full)
		}
	})
}
