package proxy

import (
	"bytes"
	"sync/atomic"
)

// framing follows the HTTP/1 message framing of what a client connection
// reads, to see what net/http's server parses and then forgets: it drops a
// Content-Length sent beside Transfer-Encoding, ignores Transfer-Encoding
// on HTTP/1.0, folds obs-fold lines and takes a bare LF for a line's end,
// and its handler cannot tell such a request from a well-formed one. A
// front-end that framed the same bytes the other way would read a second
// request where the sidecar reads a body, or the reverse (RFC 9112 §6.1,
// §6.3, §11.2): such a request is refused, 400 and the connection closed,
// as Envoy does — processing it by Transfer-Encoding alone and closing
// after would also be RFC 9112's, but forward a request the client and
// whatever stands in front of it may not have meant.
//
// Why here and not in the handler: the handler has no trace of the
// dropped fields (net/http 1.26 deletes them, and leaves Request.Close
// alone). Why not scan everything read: a body is skipped by its length
// (Content-Length, or each chunk's size), so only request heads, chunk-size
// lines and trailers are looked at, the lines net/http parses anyway
// (BenchmarkFraming: about 100 ns and no allocation for a 1 KiB POST).
// What net/http refuses itself (a bad Content-Length, two Hosts, CR or NUL
// in a field, a coding other than chunked: 400 or 501) never reaches the
// handler; framing only needs to stay in step with it.
//
// httpConn.Read feeds it everything the server reads, in order, from one
// goroutine at a time (net/http's background read takes turns with the
// others); the handler calls check for each request, in order, on the
// connection's serving goroutine (bad, why and heads are atomic: the
// background read may end a head while the handler runs). net/http ends
// the connection on every head it cannot parse and, with the general
// OPTIONS handler off, hands every other head to the handler, so the n-th
// head framing saw is the n-th request the handler gets; one it did not see the head of is refused (check). Where
// framing cannot follow, it stops looking: after a chunk-size line it
// cannot read (net/http fails that body, and may read a request from the
// rest) the next request is refused; after a request that may upgrade,
// whose bytes are no HTTP/1 any more, the next request is served with the
// connection closed after it — a client that asked for h2c and was not
// upgraded goes on in HTTP/1.1 on the same connection (curl --http2), and
// whoever framed it otherwise gets no further request to disagree about.
type framing struct {
	state  framingState
	remain uint64 // body bytes (with a chunk's CRLF) still to skip

	// The line being read when it spans reads: its first bytes, its
	// last ones, its length.
	part    [lineKeep]byte
	tail    [tailKeep]byte
	partLen int
	partial bool

	// The head being read.
	http11, te, cl, fold, bareLF, long, upgrade bool
	clValue                                     uint64
	// heads is the number of heads completed; atomic, as check compares
	// it while the background read may end the next one.
	heads atomic.Int64

	// bad is the number of the first head to refuse (1 is the
	// connection's first), 0 if none; why says why.
	bad atomic.Int64
	why atomic.Int32

	served int64 // requests the handler asked about
}

type framingState uint8

const (
	stRequestLine framingState = iota
	stHeader
	stBody
	stChunkSize
	stChunkData
	stTrailer
	stStopped
)

const (
	// lineKeep is how much of a line spanning reads framing keeps: a
	// Content-Length line, even padded, fits; a longer one is refused.
	lineKeep = 64
	// tailKeep is how much of a line's end it keeps: a request line's
	// version and CR.
	tailKeep = 9
)

// Why a request is refused.
const (
	framingOK int32 = iota
	framingTEWithCL
	framingTEOnHTTP10
	framingObsFold
	framingBareLF
	framingBadCL
	framingBadBody
	framingLost
)

var framingReasons = [...]string{
	framingOK:         "",
	framingTEWithCL:   "request has both Content-Length and Transfer-Encoding",
	framingTEOnHTTP10: "HTTP/1.0 request has Transfer-Encoding",
	framingObsFold:    "request header folded over lines (obs-fold)",
	framingBadCL:      "request has an invalid Content-Length",
	framingBareLF:     "request head line ends in a bare LF",
	framingBadBody:    "request follows a chunked body that was malformed",
	framingLost:       "",
}

// check is asked once per HTTP/1 request, in order, by the handler:
// framingOK to serve it, framingLost to serve it and close the connection
// after, anything else to refuse it (framingReasons says why).
//
// A request framing has not seen the head of is refused as well: framing
// read every byte net/http parsed that head from, so it took them for a
// body where net/http, after an error in that body, went on to read a
// request. (Under full duplex net/http keeps a connection whose unread
// body ended in an error, and reads what follows.)
func (f *framing) check() int32 {
	f.served++
	if bad := f.bad.Load(); bad != 0 && f.served >= bad {
		return f.why.Load()
	}
	if f.served > f.heads.Load() {
		return framingBadBody
	}
	return framingOK
}

// stop gives up following the connection: the head numbered head, and
// any after it, are refused for why.
func (f *framing) stop(head int64, why int32) {
	f.state = stStopped
	if f.bad.Load() == 0 {
		f.why.Store(why)
		f.bad.Store(head)
	}
}

// read follows p, the next bytes the server read.
func (f *framing) read(p []byte) {
	for len(p) > 0 {
		switch f.state {
		case stStopped:
			return
		case stBody, stChunkData:
			n := uint64(len(p))
			if n > f.remain {
				n = f.remain
			}
			f.remain -= n
			p = p[n:]
			if f.remain == 0 {
				if f.state == stBody {
					f.state = stRequestLine
				} else {
					f.state = stChunkSize
				}
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.keep(p)
			return
		}
		if !f.partial {
			f.line(p[:i], p[max(0, i-tailKeep):i], i)
		} else {
			f.keep(p[:i])
			f.partial = false
			f.line(f.part[:min(f.partLen, lineKeep)], f.tail[tailKeep-min(f.partLen, tailKeep):], f.partLen)
		}
		p = p[i+1:]
	}
}

// keep adds b to the line that spans reads.
func (f *framing) keep(b []byte) {
	if !f.partial {
		f.partial, f.partLen = true, 0
	}
	if f.partLen < lineKeep {
		copy(f.part[f.partLen:], b)
	}
	if len(b) >= tailKeep {
		copy(f.tail[:], b[len(b)-tailKeep:])
	} else {
		// Shift the tail left by len(b) and put b at its end.
		copy(f.tail[:], f.tail[len(b):])
		copy(f.tail[tailKeep-len(b):], b)
	}
	f.partLen += len(b)
}

// line takes one line, without its LF: its first bytes (all of it unless
// n > len(head)), its last ones, and its length.
func (f *framing) line(head, tail []byte, n int) {
	crlf := n > 0 && tail[len(tail)-1] == '\r'
	if crlf {
		n--
		tail = tail[:len(tail)-1]
		if len(head) > n {
			head = head[:n]
		}
	}
	// What is looked at does not depend on how the line was read.
	truncated := n > lineKeep
	head = head[:min(len(head), lineKeep)]
	switch f.state {
	case stRequestLine:
		if n == 0 {
			return // net/http skips CRLFs left after a POST's body
		}
		f.te, f.cl, f.fold, f.long, f.upgrade, f.clValue = false, false, false, false, false, 0
		f.bareLF = !crlf
		// "HTTP/1.1" or a later HTTP/1 minor version: Transfer-Encoding
		// counts. Anything else than HTTP/1.x net/http refuses.
		f.http11 = len(tail) >= 8 && bytes.HasPrefix(tail[len(tail)-8:], []byte("HTTP/1.")) && tail[len(tail)-1] >= '1' && tail[len(tail)-1] <= '9'
		f.state = stHeader
	case stHeader:
		if n == 0 {
			f.endHead()
			return
		}
		f.bareLF = f.bareLF || !crlf
		f.header(head, truncated)
	case stChunkSize:
		size, ok := chunkSize(head, crlf, truncated)
		switch {
		case !ok || size > 1<<62:
			// net/http refuses the body too (or a chunk no one sends), and
			// may read what follows as a request: none is served.
			f.stop(f.heads.Load()+1, framingBadBody)
		case size == 0:
			f.state = stTrailer
		default:
			f.remain, f.state = size+2, stChunkData
		}
	case stTrailer:
		if n == 0 {
			f.state = stRequestLine
		}
	}
}

// header notes what matters of one header line of a request head.
func (f *framing) header(line []byte, truncated bool) {
	if line[0] == ' ' || line[0] == '\t' {
		f.fold = true
		return
	}
	switch {
	case hasPrefixFold(line, "content-length:"):
		v, ok := parseLength(line[len("content-length:"):])
		if !ok || truncated || (f.cl && v != f.clValue) {
			f.long = true
		}
		f.cl, f.clValue = true, v
	case hasPrefixFold(line, "transfer-encoding:"):
		f.te = true
	case hasPrefixFold(line, "upgrade:"):
		f.upgrade = true
	}
}

// endHead decides on the head just read and what follows it.
func (f *framing) endHead() {
	heads := f.heads.Add(1)
	switch {
	case f.te && f.cl:
		f.stop(heads, framingTEWithCL)
	case f.te && !f.http11:
		f.stop(heads, framingTEOnHTTP10)
	case f.long:
		f.stop(heads, framingBadCL)
	case f.fold:
		f.stop(heads, framingObsFold)
	case f.bareLF:
		f.stop(heads, framingBareLF)
	case f.upgrade:
		f.stop(heads+1, framingLost)
	case f.te:
		f.state = stChunkSize // net/http refuses any coding but chunked
	case f.cl && f.clValue > 0:
		f.remain, f.state = f.clValue, stBody
	default:
		f.state = stRequestLine
	}
}

// hasPrefixFold reports whether b starts with the lower-case ASCII prefix.
func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := range len(prefix) {
		if b[i]|0x20 != prefix[i] && b[i] != prefix[i] {
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value as net/http does: digits
// between optional spaces and tabs.
func parseLength(v []byte) (uint64, bool) {
	v = bytes.Trim(v, " \t")
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// chunkSize parses a chunk-size line (without its LF) as net/http does:
// CRLF-ended, trailing spaces and tabs and any extension dropped, at most
// 16 hex digits.
func chunkSize(line []byte, crlf, truncated bool) (uint64, bool) {
	if !crlf {
		return 0, false
	}
	if truncated {
		// Longer than framing keeps: net/http may refuse it (its line
		// limit, its bound on extensions) where framing cannot tell, and
		// no client sends such extensions.
		return 0, false
	}
	line = bytes.TrimRight(line, " \t")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 || len(line) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(d)
	}
	return n, true
}
