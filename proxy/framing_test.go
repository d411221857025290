package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/pillionmesh/pillion/internal/smuggling"
)

// TestFraming feeds framing whole connections' worth of requests, in one
// read, one byte per read, and in reads of every size up to 64, and checks
// its verdict on each request: heads are found only where net/http finds
// them (never in a body), and keep-alive chunked uploads stay served.
func TestFraming(t *testing.T) {
	const (
		ok    = framingOK
		both  = framingTEWithCL
		h10   = framingTEOnHTTP10
		fold  = framingObsFold
		lf    = framingBareLF
		badCL = framingBadCL
		lost  = framingLost
		body  = framingBadBody
	)
	get := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	chunkedPost := "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n"
	// A body that looks like a conflicting head: it is a body.
	lookalike := "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
	clPost := fmt.Sprintf("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(lookalike), lookalike)
	longURL := "GET /" + strings.Repeat("x", 5000) + " HTTP/1.1\r\nHost: a\r\nX-Long: " + strings.Repeat("v", 3000) + "\r\n\r\n"
	for _, tc := range []struct {
		name   string
		stream string
		want   []int32
	}{
		{"keep-alive chunked uploads", chunkedPost + chunkedPost + chunkedPost, []int32{ok, ok, ok}},
		{"a chunked upload with a trailer", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: 1\r\n\r\n" + get, []int32{ok, ok}},
		{"a body that looks like a head", clPost + get, []int32{ok, ok}},
		{"chunk data that looks like a head", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(lookalike), lookalike) + get, []int32{ok, ok}},
		{"long lines", longURL + get, []int32{ok, ok}},
		{"CRLF after a POST's body", clPost + "\r\n" + get, []int32{ok, ok}},
		{"lower-case names", "POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\nxPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", []int32{ok, ok}},
		{"Content-Length and Transfer-Encoding", get + "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, []int32{ok, both, both}},
		{"Transfer-Encoding and Content-Length, any case", "POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\ncOnTeNt-LeNgTh: 0\r\n\r\n", []int32{both}},
		{"after a long head", longURL + "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", []int32{ok, both}},
		{"Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", []int32{h10}},
		{"Transfer-Encoding on HTTP/1.2", "POST / HTTP/1.2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get, []int32{ok, ok}},
		{"obs-fold", get + "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", []int32{ok, fold}},
		{"bare LF", "GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", []int32{lf}},
		{"Content-Length unreadable", "POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", []int32{badCL}},
		{"Content-Lengths that differ", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", []int32{badCL}},
		{"Content-Length padded too long", "POST / HTTP/1.1\r\nContent-Length:" + strings.Repeat(" ", 100) + "1\r\n\r\nx", []int32{badCL}},
		{"after an upgrade", "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + get + get, []int32{ok, lost, lost}},
		{"after a chunk size it cannot read", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + get, []int32{ok, body}},
		// net/http fails the body at "XX" and, under full duplex, reads the
		// GET as the next request: it is refused.
		{"chunk data not followed by CRLF", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX" + get, []int32{ok, body}},
		{"a chunk extension longer than framing keeps", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;" + strings.Repeat("a", 4094) + get, []int32{ok, body}},
		// A request net/http read where framing saw a body.
		{"a request framing did not see", clPost, []int32{ok, body}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for size := 0; size <= 64; size++ {
				f := &framing{}
				feed(f, tc.stream, size)
				var got []int32
				for range tc.want {
					got = append(got, f.check())
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("reads of %d bytes (0: all at once): verdicts %v, want %v", size, got, tc.want)
				}
			}
		})
	}
}

// feed gives f the stream in reads of size bytes, all of it at once for 0.
func feed(f *framing, stream string, size int) {
	b := []byte(stream)
	if size == 0 {
		size = len(b)
	}
	for len(b) > 0 {
		n := min(size, len(b))
		f.read(b[:n])
		b = b[n:]
	}
}

// BenchmarkFraming is framing's share of BenchmarkHTTPRequest's request:
// its head is scanned, its body skipped.
func BenchmarkFraming(b *testing.B) {
	req := []byte("POST /bench?x=1 HTTP/1.1\r\nHost: b.example:8080\r\nUser-Agent: bench\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Length: " + fmt.Sprint(benchBody) + "\r\n\r\n" + strings.Repeat("q", benchBody))
	f := &framing{}
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		f.read(req)
		if f.check() != framingOK {
			b.Fatal("refused")
		}
	}
}

// FuzzFraming: framing's verdicts do not depend on how the bytes were
// read; wherever Go's parser finds a request's end (its head, its body by
// Content-Length or chunks, its trailers), framing is at a request's start
// too, having counted as many heads — unless it stopped following the
// connection; and no request Go's parser reads after a body that failed
// is served.
func FuzzFraming(f *testing.F) {
	for _, c := range smuggling.Cases() {
		f.Add([]byte(c.Request))
	}
	f.Add([]byte("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: v\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdePOST / HTTP/1.0\r\nContent-Length: 1\r\n\r\nx"))
	f.Add([]byte("POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		whole, bytewise := &framing{}, &framing{}
		whole.read(stream)
		for i := range stream {
			bytewise.read(stream[i : i+1])
		}
		if whole.state != bytewise.state || whole.heads.Load() != bytewise.heads.Load() || whole.bad.Load() != bytewise.bad.Load() || whole.why.Load() != bytewise.why.Load() {
			t.Fatalf("read at once: state %d, %d heads, bad %d (%d); byte by byte: state %d, %d heads, bad %d (%d)",
				whole.state, whole.heads.Load(), whole.bad.Load(), whole.why.Load(), bytewise.state, bytewise.heads.Load(), bytewise.bad.Load(), bytewise.why.Load())
		}

		// As net/http's server with full duplex reads the connection: a
		// body that ends in an error does not end it, and what follows is
		// read as the next request. framing is given what the server read
		// before each head is handed over, and asked about each request.
		fr := &framing{}
		rd := bytes.NewReader(stream)
		br := bufio.NewReader(rd)
		fed := 0
		feedTo := func() {
			end := len(stream) - rd.Len() - br.Buffered()
			fr.read(stream[fed:end])
			fed = end
		}
		bodyFailed := false
		for n := int64(1); ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			feedTo()
			why := fr.check()
			if bodyFailed && (why == framingOK || why == framingLost) {
				t.Fatalf("request %d follows a body that failed and would be served (verdict %d): %q", n, why, stream[:fed])
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				bodyFailed = true
			}
			feedTo()
			if fr.state == stStopped || bodyFailed {
				continue
			}
			if fr.state != stRequestLine || fr.heads.Load() != n {
				t.Fatalf("Go's parser read request %d ending at byte %d; framing is in state %d with %d heads: %q", n, fed, fr.state, fr.heads.Load(), stream[:fed])
			}
		}
	})
}
