package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// maxHeldBody is the largest request body (of a known length) read before
// the request is sent: it then leaves with the HEADERS in one write, and
// can be sent again if the peer did not process it.
const maxHeldBody = 64 << 10

// request is a request as it is sent.
type request struct {
	req    *http.Request
	fields []string
	held   bool     // the whole body is in body (or there is none)
	body   []byte   // the held body
	trail  []string // the held body's trailers, as fields
}

// CompleteBody is a request body that can tell it has all arrived: the
// body of a request pillion's Server received with its END_STREAM. A
// wrapper of one passes Complete on.
type CompleteBody interface {
	// Complete reports whether the body's end has arrived, and how many
	// bytes are left to read before it.
	Complete() (size int, ok bool)
}

func newRequest(req *http.Request) (*request, error) {
	fields, err := requestFields(req)
	if err != nil {
		return nil, err
	}
	rq := &request{req: req, fields: fields}
	if req.Body == nil || req.Body == http.NoBody {
		rq.held = true
		return rq, nil
	}
	size := -1
	if req.ContentLength > 0 && req.ContentLength <= maxHeldBody {
		size = int(req.ContentLength)
	} else if cb, ok := req.Body.(CompleteBody); ok {
		if n, done := cb.Complete(); done && n <= maxHeldBody && (req.ContentLength < 0 || int64(n) == req.ContentLength) {
			size = n
		}
	}
	if size < 0 {
		return rq, nil // streamed as it is read
	}
	defer req.Body.Close()
	rq.body = make([]byte, size)
	if _, err := io.ReadFull(req.Body, rq.body); err != nil {
		return nil, err
	}
	// Read on to the end, so that the body's reader sees it ends where
	// its length said (and its trailers arrive).
	var extra [1]byte
	if n, err := req.Body.Read(extra[:]); n > 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("h2: request body longer than its content-length %d", size)
		}
		return nil, err
	}
	rq.held = true
	rq.trail = trailerFields(req.Trailer)
	return rq, nil
}

// trailerFields are the trailers that have values, as HTTP/2 fields.
func trailerFields(t http.Header) []string {
	var fields []string
	for k, vv := range t {
		for _, v := range vv {
			fields = append(fields, lower(k), v)
		}
	}
	return fields
}

// resendable reports whether rq can be sent again.
func (rq *request) resendable() bool { return rq.held }

// ownFields are the header keys requestFields sends from the request's
// own fields instead (its host, length and trailers).
var ownFields = map[string]bool{"Host": true, "Content-Length": true, "Trailer": true}

// requestFields are req's header fields as HTTP/2 sends them.
func requestFields(req *http.Request) ([]string, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !httpguts.ValidHostHeader(host) {
		return nil, fmt.Errorf("h2: invalid host %q", host)
	}
	fields := make([]string, 0, 8+2*len(req.Header)+4)
	if method == http.MethodConnect {
		fields = append(fields, ":method", method, ":authority", host)
	} else {
		path := req.URL.RequestURI()
		if path == "" {
			path = "/"
		}
		scheme := req.URL.Scheme
		if scheme == "" {
			scheme = "http"
		}
		fields = append(fields, ":method", method, ":scheme", scheme, ":authority", host, ":path", path)
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("h2: invalid header field name %q", k)
		}
		if connectionSpecific[k] || ownFields[k] {
			continue
		}
		if k == "User-Agent" && len(vv) == 1 && vv[0] == "" {
			continue // net/http's way of saying none
		}
		name := lower(k)
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("h2: invalid value of header field %q", k)
			}
			if name == "te" && !strings.EqualFold(v, "trailers") {
				continue
			}
			fields = append(fields, name, v)
		}
	}
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, lower(k))
		}
		fields = append(fields, "trailer", strings.Join(keys, ","))
	}
	switch {
	case req.ContentLength > 0:
		fields = append(fields, "content-length", strconv.FormatInt(req.ContentLength, 10))
	case req.ContentLength == 0 && (req.Body == nil || req.Body == http.NoBody) &&
		(method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch):
		fields = append(fields, "content-length", "0")
	}
	return fields, nil
}

// clientStream is a request's stream: its response, when it comes.
type clientStream struct {
	cc  *clientConn
	s   *stream
	rq  *request
	res *http.Response
	// result takes the response or the error, once.
	result    chan error
	delivered atomic.Bool
	final     bool // the final response's headers arrived (the reader loop's)
	// trailer holds the trailers the reader loop received, which the
	// body's reader moves to res.Trailer at the body's end.
	trailer http.Header
	// stop ends the watch on the request's context once the body ended;
	// nil without a body.
	stop func() bool
}

func (cs *clientStream) deliver(err error) {
	if cs.delivered.CompareAndSwap(false, true) {
		cs.result <- err
	}
}

// roundTrip sends rq on a stream cc reserved for it.
func (cc *clientConn) roundTrip(rq *request) (*http.Response, error) {
	cs := &clientStream{cc: cc, rq: rq, result: make(chan error, 1)}
	cc.w.batch()
	cc.mu.Lock()
	cc.reserved--
	if cc.draining || cc.err != nil {
		cc.mu.Unlock()
		cc.w.mu.Unlock()
		return nil, errNotSent
	}
	s := cc.newStream(cc.nextID, cs)
	cc.nextID += 2
	cs.s = s
	cc.mu.Unlock()
	end := rq.held && rq.trail == nil
	n, err := cc.appendHeadersData(s, rq.fields, rq.body, end)
	if err != nil {
		cc.w.mu.Unlock()
		return nil, errNotSent // the stream ended before anything was appended
	}
	var trailErr error
	if rq.held && !end && n == len(rq.body) {
		trailErr = cc.appendTrailers(s, rq.trail)
	}
	if err := cc.w.flush(); err != nil {
		var we *writeError
		if errors.As(err, &we) && we.maybeSent {
			// Some of it may have reached the peer: never sent twice.
			cc.reset(s, http2.ErrCodeCancel, err)
			return nil, err
		}
		// The connection failed before the frames were written: the peer
		// never saw the request.
		cc.reset(s, http2.ErrCodeCancel, errNotSent)
		return nil, errNotSent
	}
	if trailErr != nil {
		// The stream ended between its HEADERS and its trailers: refused
		// by a GOAWAY (errNotSent: the peer will not process it), or its
		// connection closing, when the HEADERS may have gone.
		return nil, trailErr
	}
	switch {
	case !rq.held:
		go cs.sendBody()
	case n < len(rq.body):
		go func() {
			if cc.writeData(s, rq.body[n:], rq.trail == nil) == nil && rq.trail != nil {
				_ = cc.writeHeaders(s, rq.trail, true)
			}
		}()
	}
	ctx := rq.req.Context()
	select {
	case err = <-cs.result:
	case <-ctx.Done():
		cc.reset(s, http2.ErrCodeCancel, ctx.Err())
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if cs.res.Body != http.NoBody {
		// The request's context bounds the response's body too, as in
		// net/http: a caller that leaves ends the stream.
		cs.stop = context.AfterFunc(ctx, func() { cc.reset(s, http2.ErrCodeCancel, ctx.Err()) })
	}
	return cs.res, nil
}

// sendBody streams the request body, then its trailers or END_STREAM.
func (cs *clientStream) sendBody() {
	req, s, c := cs.rq.req, cs.s, cs.cc.conn
	defer req.Body.Close()
	buf := cs.cc.t.bufs.get()
	defer cs.cc.t.bufs.put(buf)
	buf = buf[:min(cap(buf), http2DefaultMaxFrame)]
	for {
		n, err := req.Body.Read(buf)
		if n > 0 {
			if c.writeData(s, buf[:n], false) != nil {
				return // reset, or the connection is gone: the stream says why
			}
		}
		switch {
		case err == io.EOF:
			if fields := trailerFields(req.Trailer); fields != nil {
				_ = c.writeHeaders(s, fields, true)
				return
			}
			_ = c.writeData(s, nil, true)
			return
		case err != nil:
			cs.deliver(err)
			c.reset(s, http2.ErrCodeCancel, err)
			return
		}
	}
}

// headers handles the response's header blocks: informational ones, the
// final one, and trailers.
func (cs *clientStream) headers(f *http2.MetaHeadersFrame) error {
	if cs.final {
		if !f.StreamEnded() {
			cs.fail(errors.New("h2: a second header block that does not end the stream"))
			return nil
		}
		// Kept apart until the body's reader reaches its end: the
		// response's Trailer map is the reader's (the router reads it
		// before the body, and after).
		cs.trailer = make(http.Header, len(f.RegularFields()))
		for _, hf := range f.RegularFields() {
			k := canonical(hf.Name)
			cs.trailer[k] = append(cs.trailer[k], hf.Value)
		}
		return nil
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 || code == http.StatusSwitchingProtocols {
		cs.fail(fmt.Errorf("h2: invalid response status %q", f.PseudoValue("status")))
		return nil
	}
	header := fieldsHeader(f.RegularFields())
	if code < 200 {
		if trace := httptrace.ContextClientTrace(cs.rq.req.Context()); trace != nil {
			if code == http.StatusContinue && trace.Got100Continue != nil {
				trace.Got100Continue()
			}
			if trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(code, textproto.MIMEHeader(header)); err != nil {
					cs.fail(err)
				}
			}
		}
		return nil
	}
	cs.final = true
	res := &http.Response{
		Status:        strconv.Itoa(code) + " " + http.StatusText(code),
		StatusCode:    code,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		ContentLength: -1,
		Request:       cs.rq.req,
	}
	if cl := header["Content-Length"]; len(cl) > 0 {
		if f.StreamEnded() && cl[0] != "0" && cs.rq.req.Method != http.MethodHead &&
			code != http.StatusNoContent && code != http.StatusNotModified {
			cs.fail(fmt.Errorf("h2: content-length %q on a response with no body", cl[0]))
			return nil
		}
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || len(cl) > 1 && !allSame(cl) {
			cs.fail(fmt.Errorf("h2: invalid content-length %q", cl))
			return nil
		}
		res.ContentLength = n
		if cs.rq.req.Method != http.MethodHead && code != http.StatusNoContent && code != http.StatusNotModified {
			cs.s.wantLen = n
		}
	}
	if tr := header["Trailer"]; len(tr) > 0 {
		res.Trailer = make(http.Header)
		for _, v := range tr {
			for _, k := range strings.Split(v, ",") {
				if k = textproto.TrimString(k); k != "" {
					res.Trailer[textproto.CanonicalMIMEHeaderKey(k)] = nil
				}
			}
		}
	}
	if f.StreamEnded() {
		res.Body = http.NoBody
		if res.ContentLength < 0 {
			res.ContentLength = 0
		}
	} else {
		if res.Trailer == nil {
			res.Trailer = make(http.Header) // trailers may come undeclared
		}
		res.Body = clientBody{cs}
	}
	cs.res = res
	cs.deliver(nil)
	return nil
}

func allSame(vv []string) bool {
	for _, v := range vv[1:] {
		if v != vv[0] {
			return false
		}
	}
	return true
}

// fail resets the stream for a malformed response.
func (cs *clientStream) fail(err error) {
	err = http2.StreamError{StreamID: cs.s.id, Code: http2.ErrCodeProtocol, Cause: err}
	cs.deliver(err)
	cs.cc.conn.reset(cs.s, http2.ErrCodeProtocol, err)
}

// ended: the stream was reset or the connection lost. A request without
// its response yet gets the error; errNotSent when the peer says it did
// not process it.
func (cs *clientStream) ended(err error) {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		err = errNotSent
	}
	cs.deliver(err)
}

// clientBody is a response's body: closing it before its end cancels the
// stream.
type clientBody struct{ cs *clientStream }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.cs.s.body.Read(p)
	if err != nil {
		b.cs.stop()
	}
	if err == io.EOF && b.cs.trailer != nil {
		// The pipe's end orders this after the reader loop's write.
		for k, vv := range b.cs.trailer {
			b.cs.res.Trailer[k] = vv
		}
		b.cs.trailer = nil
	}
	return n, err
}

func (b clientBody) Close() error {
	b.cs.stop()
	b.cs.s.body.close()
	b.cs.cc.conn.reset(b.cs.s, http2.ErrCodeCancel, errClosedBody)
	return nil
}
