package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// serverStream is one request a serverConn serves. It is also the
// request's body (requestBody) and its ResponseWriter (responseWriter),
// so that a request costs one allocation of them all.
type serverStream struct {
	sc     *serverConn
	s      *stream
	req    *http.Request
	cancel context.CancelFunc

	// Under sc.mu: the stream no longer counts as active (its handler
	// returned or its stream ended), and whether it ended first.
	finished, zombie bool

	// hmu orders a 100 Continue, sent by a body's reader, before the
	// final response, which another goroutine may be writing.
	hmu          sync.Mutex
	needContinue bool // Expect: 100-continue, and no 100 or final response sent yet
	finalSent    bool

	// trailer is what a trailing header block carried (the reader loop
	// fills it before the body's io.EOF); the body's reader copies it to
	// req.Trailer at io.EOF.
	trailer http.Header

	rw responseState
}

var _ events = (*serverStream)(nil)

// errMalformed is a request RFC 9113 §8.1.1 calls malformed: the stream
// is reset with PROTOCOL_ERROR.
var errMalformed = errors.New("h2: malformed request")

func malformed(why string) error { return fmt.Errorf("%w: %s", errMalformed, why) }

// newRequest builds the request from its header block as net/http's
// HTTP/2 server does, or returns why it is malformed (RFC 9113 §8.3).
func (ss *serverStream) newRequest(f *http2.MetaHeadersFrame) (*http.Request, error) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	scheme, authority := f.PseudoValue("scheme"), f.PseudoValue("authority")
	if f.PseudoValue("protocol") != "" {
		return nil, malformed(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
	}
	isConnect := method == http.MethodConnect
	switch {
	case isConnect && (path != "" || scheme != "" || authority == ""):
		return nil, malformed("CONNECT with :path or :scheme or without :authority")
	case !isConnect && (method == "" || path == "" || (scheme != "http" && scheme != "https")):
		return nil, malformed("missing :method, :path or :scheme")
	case !validMethod(method):
		return nil, malformed("invalid :method")
	}
	header := fieldsHeader(f.RegularFields())
	for k := range header {
		if connectionSpecific[k] {
			return nil, malformed("connection-specific field " + k)
		}
	}
	if te := header["Te"]; len(te) > 1 || (len(te) == 1 && te[0] != "trailers") {
		return nil, malformed(`TE other than "trailers"`)
	}
	if host := header["Host"]; len(host) > 1 || (len(host) == 1 && authority != "" && host[0] != authority) {
		return nil, malformed("Host differs from :authority")
	} else if len(host) == 1 {
		authority = host[0]
		delete(header, "Host")
	}
	if authority != "" && (strings.IndexByte(authority, '@') >= 0 || !httpguts.ValidHostHeader(authority)) {
		return nil, malformed("invalid :authority")
	}
	u, requestURI := &url.URL{Host: authority}, authority
	if !isConnect {
		if path[0] != '/' && path != "*" {
			return nil, malformed("invalid :path")
		}
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, malformed("invalid :path")
		}
		requestURI = path
	}
	contentLength, err := requestContentLength(header, f.StreamEnded())
	if err != nil {
		return nil, err
	}
	if cookies := header["Cookie"]; len(cookies) > 1 {
		header["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if httpguts.HeaderValuesContainsToken(header["Expect"], "100-continue") {
		delete(header, "Expect")
		ss.needContinue = !f.StreamEnded()
	}
	ctx, cancel := context.WithCancel(ss.sc.ctx)
	tmpl := http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		ContentLength: contentLength,
		Body:          http.NoBody,
		Host:          authority,
		Trailer:       declaredTrailer(header),
		RemoteAddr:    ss.sc.remoteAddr,
		RequestURI:    requestURI,
		TLS:           ss.sc.tls,
	}
	if !f.StreamEnded() {
		tmpl.Body = (*requestBody)(ss)
	}
	ss.req, ss.cancel = tmpl.WithContext(ctx), cancel
	ss.rw.init(ss.req)
	return ss.req, nil
}

// requestContentLength is the request's ContentLength: its content-length
// field, -1 without one, and 0 when the header block ended the stream.
func requestContentLength(header http.Header, ended bool) (int64, error) {
	vv, ok := header["Content-Length"]
	if !ok {
		if ended {
			return 0, nil
		}
		return -1, nil
	}
	for _, v := range vv[1:] {
		if v != vv[0] {
			return 0, malformed("conflicting content-length")
		}
	}
	n, err := strconv.ParseUint(vv[0], 10, 63)
	switch {
	case err != nil:
		return 0, malformed("invalid content-length")
	case ended && n != 0:
		return 0, malformed("content-length without DATA")
	}
	return int64(n), nil
}

// declaredTrailer is the request's Trailer: the keys its Trailer field
// announces. The field itself is removed, as net/http does.
func declaredTrailer(header http.Header) http.Header {
	var t http.Header
	for _, v := range header["Trailer"] {
		for key := range strings.SplitSeq(v, ",") {
			switch key = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(key)); key {
			case "", "Transfer-Encoding", "Trailer", "Content-Length":
			default:
				if t == nil {
					t = make(http.Header)
				}
				t[key] = nil
			}
		}
	}
	delete(header, "Trailer")
	return t
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if !httpguts.IsTokenRune(r) {
			return false
		}
	}
	return true
}

// headers takes a header block after the request's: its trailers (reader
// loop). A malformed one resets the stream; none is a connection error.
func (ss *serverStream) headers(f *http2.MetaHeadersFrame) error {
	var err error
	switch {
	case !f.StreamEnded():
		err = malformed("a second header block without END_STREAM")
	case len(f.PseudoFields()) > 0:
		err = malformed("pseudo-header fields in trailers")
	}
	for _, hf := range f.RegularFields() {
		if err != nil {
			break
		}
		key := canonical(hf.Name)
		if !httpguts.ValidTrailerHeader(key) {
			err = malformed("trailer " + key)
			break
		}
		if ss.trailer == nil {
			ss.trailer = make(http.Header)
		}
		ss.trailer[key] = append(ss.trailer[key], hf.Value)
	}
	if err != nil {
		ss.sc.debug("h2: malformed trailers", err)
		ss.sc.c.reset(ss.s, http2.ErrCodeProtocol, http2.StreamError{StreamID: ss.s.id, Code: http2.ErrCodeProtocol, Cause: err})
	}
	return nil
}

// ended is told that the stream was reset, or the connection lost.
func (ss *serverStream) ended(error) {
	ss.cancel()
	sc := ss.sc
	sc.mu.Lock()
	if ss.finished {
		sc.mu.Unlock()
		return
	}
	ss.finished, ss.zombie = true, true
	sc.mu.Unlock()
	sc.streamDone(true)
}

// serve runs the handler (on the stream's own goroutine), then ends the
// response and the stream.
func (ss *serverStream) serve(h http.Handler, req *http.Request) {
	w := (*responseWriter)(ss)
	if ss.run(h, w, req) {
		w.finish()
	}
	ss.end()
}

// run runs the handler, and resets the stream if it panics (quietly for
// http.ErrAbortHandler, the way to abort a response).
func (ss *serverStream) run(h http.Handler, w http.ResponseWriter, req *http.Request) (ok bool) {
	defer func() {
		if ok {
			return
		}
		if e := recover(); e != nil && e != http.ErrAbortHandler {
			ss.sc.log.Error("h2: handler panic", zap.Any("panic", e), zap.String("method", req.Method),
				zap.String("uri", req.RequestURI), zap.String("remote", req.RemoteAddr),
				zap.ByteString("stack", debug.Stack()))
		}
		ss.sc.c.reset(ss.s, http2.ErrCodeInternal, errHandlerPanic)
	}()
	h.ServeHTTP(w, req)
	return true
}

var errHandlerPanic = errors.New("h2: the handler panicked")

// end ends the stream after its handler: RST_STREAM if the response is
// incomplete, or NO_ERROR if the client is still sending a body nobody
// will read (RFC 9113 §8.1); what the body holds is credited back.
func (ss *serverStream) end() {
	s, c, sc := ss.s, ss.sc.c, ss.sc
	if ss.rw.buf != nil {
		sc.srv.bufs.put(ss.rw.buf)
		ss.rw.buf = nil
	}
	c.mu.Lock()
	local, remote := s.localEnded, s.remoteEnded
	c.mu.Unlock()
	switch {
	case !local:
		c.reset(s, http2.ErrCodeInternal, errHandlerDone)
	case !remote:
		c.reset(s, http2.ErrCodeNo, errHandlerDone)
	}
	s.body.close()
	ss.cancel()
	sc.mu.Lock()
	zombie, counted := ss.zombie, !ss.finished
	ss.finished = true
	sc.mu.Unlock()
	switch {
	case zombie:
		sc.zombieDone()
	case counted:
		sc.streamDone(false)
	}
}

// requestBody is a request's Body: the stream's pipe, preceded by a 100
// Continue when the client expects one, followed by its trailers.
type requestBody serverStream

func (b *requestBody) Read(p []byte) (int, error) {
	ss := (*serverStream)(b)
	if len(p) > 0 {
		ss.sendContinue()
	}
	n, err := ss.s.body.Read(p)
	switch {
	case err == io.EOF:
		if ss.trailer != nil && ss.req.Trailer == nil {
			ss.req.Trailer = make(http.Header, len(ss.trailer))
		}
		for k, vv := range ss.trailer {
			ss.req.Trailer[k] = vv
		}
		ss.trailer = nil
	case errors.Is(err, errClosedBody):
		err = http.ErrBodyReadAfterClose
	}
	return n, err
}

// Complete reports whether the request's END_STREAM arrived, and how much
// of the body is left to read: a client forwarding it (the proxy's) can
// send it whole, with its headers.
func (b *requestBody) Complete() (int, bool) { return b.s.body.complete() }

var _ CompleteBody = (*requestBody)(nil)

// Close drops what the body has not read and what the client still
// sends (its flow-control credit given back).
func (b *requestBody) Close() error {
	b.s.body.close()
	return nil
}

// sendContinue sends the 100 Continue the client expects, once, unless
// the final response was sent.
func (ss *serverStream) sendContinue() {
	ss.hmu.Lock()
	defer ss.hmu.Unlock()
	if !ss.needContinue {
		return
	}
	ss.needContinue = false
	if !ss.finalSent {
		_ = ss.sc.c.writeHeaders(ss.s, []string{":status", "100"}, false)
	}
}
