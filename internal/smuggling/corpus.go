// Package smuggling is the request-smuggling corpus of issue 15 and the one
// way to run a case: requests built to be framed one way by one party and
// another way by the next (RFC 9112 §6.3, §11.2), a raw TCP application
// that records the bytes it received on each connection, and the check
// that the sidecars in between refused the request or forwarded exactly
// one well-formed request. The proxy's in-process test and the end-to-end
// test through real network namespaces run the same table.
package smuggling

import (
	"net/http"
	"strconv"
	"strings"
)

// Want is what the sidecars must do with a case.
type Want int

const (
	// Refused: the sidecar answers 4xx (501 for a transfer coding it does
	// not know, net/http's answer), closes the connection, and no complete
	// request reaches the application. The sidecars stream: a request's
	// head may reach the application before the body that gets it refused,
	// which then ends cut.
	Refused Want = iota
	// OneRequest: the application gets exactly one well-formed request for
	// it (Go's strict parser reads one request and its whole body, nothing
	// left over), answered 200; a follow-up request on the same client
	// connection reaches it as the next one.
	OneRequest
	// Verbatim: detection does not take the connection for HTTP/1.x (a
	// request line that is not "METHOD /origin-form HTTP/1.x" CRLF), so it
	// is opaque TCP: the application gets the client's bytes unchanged,
	// and at most one request can be read from them.
	Verbatim
)

func (w Want) String() string {
	switch w {
	case Refused:
		return "refused"
	case OneRequest:
		return "one request"
	case Verbatim:
		return "opaque, verbatim"
	}
	return "Want(" + strconv.Itoa(int(w)) + ")"
}

// Case is one entry of the corpus.
type Case struct {
	Name    string
	Request string // the bytes a client sends, one request or the start of one
	Want    Want
	// Forged are header fields of Request the application must not get
	// with these values (the sidecars drop pillion- fields from callers
	// that are not peer sidecars, and may set their own).
	Forged http.Header
}

// Smuggled is the request hidden in the cases' bodies: the application
// must never get it.
const Smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

// SmuggledPath is Smuggled's target.
const SmuggledPath = "/smuggled"

// Cases returns the corpus, a new slice each call.
func Cases() []Case {
	s := Smuggled
	n := strconv.Itoa(len(s)) // a Content-Length that makes Smuggled the body
	post := "POST / HTTP/1.1\r\nHost: a\r\n"
	chunked := post + "Transfer-Encoding: chunked\r\n\r\n"
	return []Case{
		// Content-Length against Transfer-Encoding, and Content-Length
		// against itself.
		{Name: "Content-Length then Transfer-Encoding", Request: post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "Transfer-Encoding then Content-Length", Request: post + "Transfer-Encoding: chunked\r\nContent-Length: " + strconv.Itoa(len("0\r\n\r\n")+len(s)) + "\r\n\r\n0\r\n\r\n" + s},
		{Name: "Content-Length: 0 with Transfer-Encoding", Request: post + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n0\r\n\r\n"},
		{Name: "two Content-Lengths", Request: post + "Content-Length: 0\r\nContent-Length: " + n + "\r\n\r\n" + s},
		{Name: "Content-Length list", Request: post + "Content-Length: 0, " + n + "\r\n\r\n" + s},
		{Name: "Content-Length with a sign", Request: post + "Content-Length: +" + n + "\r\n\r\n" + s},
		{Name: "Content-Length in hex", Request: post + "Content-Length: 0x" + strconv.FormatInt(int64(len(s)), 16) + "\r\n\r\n" + s},
		// Transfer-Encoding variants.
		{Name: "chunked, then identity", Request: post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + s},
		{Name: "identity, then chunked", Request: post + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "two Transfer-Encoding fields", Request: post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + s},
		{Name: "an unknown coding", Request: post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "chunked with a trailing tab", Request: post + "Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", Want: OneRequest},
		{Name: "Transfer-Encoding on HTTP/1.0", Request: "POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "Transfer-Encoding and Content-Length on HTTP/1.0", Request: "POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + s},
		// Header syntax.
		{Name: "obs-fold", Request: post + "Content-Length: 0\r\nX-A: b\r\n Content-Length: " + n + "\r\n\r\n" + s},
		{Name: "obs-fold of Transfer-Encoding", Request: post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "bare CR in a value", Request: post + "X-A: b\rContent-Length: " + n + "\r\n\r\n" + s},
		{Name: "bare LF in a value", Request: post + "X-A: b\nContent-Length: " + n + "\r\n\r\n" + s},
		{Name: "bare CR in a name", Request: post + "X\rA: b\r\n\r\n"},
		{Name: "bare LF in a name", Request: post + "X\nContent-Length: " + n + "\r\n\r\n" + s},
		{Name: "NUL in a value", Request: post + "X-A: b\x00c\r\n\r\n"},
		{Name: "NUL in a name", Request: post + "X\x00A: b\r\n\r\n"},
		{Name: "space before the colon", Request: post + "Content-Length : " + n + "\r\n\r\n" + s},
		{Name: "tab before the colon", Request: post + "Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n" + s},
		{Name: "two Hosts", Request: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
		{Name: "no Host", Request: "GET / HTTP/1.1\r\n\r\n"},
		// Chunked framing.
		{Name: "a chunk size that is not hex", Request: chunked + "zz\r\n" + s},
		{Name: "a chunk size that overflows", Request: chunked + "10000000000000001\r\nx\r\n0\r\n\r\n" + s},
		{Name: "a negative chunk size", Request: chunked + "-1\r\nx\r\n0\r\n\r\n" + s},
		{Name: "a chunk size with 0x", Request: chunked + "0x1\r\nx\r\n0\r\n\r\n" + s},
		{Name: "an empty chunk size", Request: chunked + "\r\nx\r\n0\r\n\r\n" + s},
		{Name: "an oversize chunk-size line", Request: chunked + strings.Repeat("0", 5000) + "1\r\nx\r\n0\r\n\r\n" + s},
		{Name: "a chunk extension too long", Request: chunked + "1;" + strings.Repeat("e", 5000) + "\r\nx\r\n0\r\n\r\n" + s},
		{Name: "chunk extensions outweighing the data", Request: chunked + strings.Repeat("1;"+strings.Repeat("e", 1000)+"\r\nx\r\n", 20) + "0\r\n\r\n" + s},
		{Name: "a bare CR in a chunk extension", Request: chunked + "1;a\rb\r\nx\r\n0\r\n\r\n" + s},
		{Name: "a chunk-size line ending in a bare LF", Request: chunked + "1\nx\r\n0\r\n\r\n" + s},
		{Name: "a chunk longer than its size", Request: chunked + "1\r\nxx\r\n0\r\n\r\n" + s},
		{Name: "no CRLF after the chunk data", Request: chunked + "3\r\nabc0\r\n\r\n" + s},
		// What is allowed stays allowed, and reaches the application once.
		{Name: "a chunk extension", Request: chunked + "1;name=value\r\nx\r\n0\r\n\r\n", Want: OneRequest},
		{Name: "chunked with a trailer", Request: chunked + "1\r\nx\r\n0\r\nX-T: v\r\n\r\n", Want: OneRequest},
		{Name: "OPTIONS *", Request: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Want: OneRequest},
		{Name: "two equal Content-Lengths", Request: post + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", Want: OneRequest},
		{Name: "forged pillion- headers", Request: "GET /forged HTTP/1.1\r\nHost: a\r\nPillion-Orig-Proto: HTTP/2\r\nPillion-Attempt-Count: 7\r\nPillion-Secret: x\r\n\r\n", Want: OneRequest,
			Forged: http.Header{"Pillion-Orig-Proto": {"HTTP/2"}, "Pillion-Attempt-Count": {"7"}, "Pillion-Secret": {"x"}}},
		// Request lines detection does not take for HTTP/1.x: opaque TCP.
		{Name: "absolute form with another Host", Request: "GET http://b.example/x HTTP/1.1\r\nHost: a\r\n\r\n", Want: Verbatim},
		{Name: "a bare LF ending the request line", Request: "GET / HTTP/1.1\nHost: a\r\n\r\n", Want: Verbatim},
		{Name: "HTTP/0.9", Request: "GET /\r\n", Want: Verbatim},
	}
}
