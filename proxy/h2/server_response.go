package h2

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// responseState is what a responseWriter keeps; only the handler's
// goroutine uses it.
type responseState struct {
	header http.Header
	status int  // the final status; 0 before it was decided
	bodyOK bool // the status allows a body
	isHead bool
	sent   bool // the final HEADERS were sent
	done   bool // the handler returned
	// clen is the content-length sent (the handler's, or the body's
	// length when it returned before anything was sent), -1 if none;
	// written counts what the handler wrote.
	clen, written int64
	buf           []byte // the body not yet sent, from the Server's Buffers
	err           error  // the first write error: every later write fails with it
	// fields is the final header block, decided at WriteHeader; meta says
	// what of it the handler set (sent content-type, date).
	fields    []string
	fieldsBuf [24]string
	hasType   bool // Content-Type, or Content-Encoding (no sniffing either way)
	hasDate   bool
	closeConn bool     // Connection: close
	trailers  []string // the keys announced in Trailer, canonical
}

func (rs *responseState) init(req *http.Request) {
	rs.isHead = req.Method == http.MethodHead
	rs.clen = -1
}

// responseWriter is a request's http.ResponseWriter. Small writes are
// buffered, so that a handler that writes a small body and returns sends
// its HEADERS and DATA in one write; Flush sends what is buffered. Write
// blocks while the flow-control windows are closed.
type responseWriter serverStream

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ http.Flusher        = (*responseWriter)(nil)
	_ interface {
		FlushError() error
		EnableFullDuplex() error
	} = (*responseWriter)(nil)
)

var errHandlerDone = errors.New("h2: the handler returned")

// Header is the response's header, and after the body its trailers: the
// keys announced in the Trailer field, and those named with
// http.TrailerPrefix.
func (w *responseWriter) Header() http.Header {
	if w.rw.header == nil {
		w.rw.header = make(http.Header)
	}
	return w.rw.header
}

// WriteHeader sends an informational (1xx) response at once, and decides
// the final one (≥ 200), which the first write or Flush sends; a second
// final status is ignored.
func (w *responseWriter) WriteHeader(code int) {
	rs := &w.rw
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if rs.done || rs.status != 0 {
		return
	}
	if code < 200 {
		if code != http.StatusSwitchingProtocols { // not in HTTP/2 (RFC 9113 §8.6)
			w.informational(code)
		}
		return
	}
	rs.status = code
	rs.bodyOK = code != http.StatusNoContent && code != http.StatusNotModified
	rs.fields = w.appendFields(rs.fieldsBuf[:0], code, true)
}

// informational sends a 1xx response with the header as it is (RFC 8297).
func (w *responseWriter) informational(code int) {
	ss := (*serverStream)(w)
	fields := w.appendFields(w.rw.fieldsBuf[:0], code, false)
	ss.hmu.Lock()
	defer ss.hmu.Unlock()
	if code == http.StatusContinue {
		ss.needContinue = false
	}
	if err := ss.sc.c.writeHeaders(ss.s, fields, false); err != nil && w.rw.err == nil {
		w.rw.err = err
	}
}

// appendFields appends the header block of a response with status code
// to fields: the header without the fields HTTP/2 forbids (RFC 9113
// §8.2.2) and, when final, with what it announces noted.
func (w *responseWriter) appendFields(fields []string, code int, final bool) []string {
	rs := &w.rw
	fields = append(fields, ":status", statusString(code))
	connection := rs.header["Connection"]
	for k, vv := range rs.header {
		if connectionSpecific[k] {
			continue
		}
		switch k {
		case "Te":
			continue
		case "Content-Length":
			if final && len(vv) > 0 {
				if n, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
					rs.clen = int64(n)
				}
			}
			continue // sent by finalFields
		case "Content-Type":
			rs.hasType = rs.hasType || final
		case "Content-Encoding":
			rs.hasType = rs.hasType || (final && len(vv) > 0 && vv[0] != "")
		case "Date":
			rs.hasDate = rs.hasDate || final
		case "Trailer":
			if final {
				rs.trailers = announcedTrailers(rs.trailers, vv)
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || namedIn(connection, k) {
			continue
		}
		name := lower(k)
		if !httpguts.ValidHeaderFieldName(name) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				fields = append(fields, name, v)
			}
		}
	}
	if final && httpguts.HeaderValuesContainsToken(connection, "close") {
		rs.closeConn = true
	}
	return fields
}

// namedIn reports whether the Connection field's values name k.
func namedIn(connection []string, k string) bool {
	for _, v := range connection {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textTrim(tok), k) {
				return true
			}
		}
	}
	return false
}

func textTrim(s string) string { return strings.Trim(s, " \t") }

// announcedTrailers appends the valid trailer keys the Trailer field's
// values vv name.
func announcedTrailers(keys, vv []string) []string {
	for _, v := range vv {
		for k := range strings.SplitSeq(v, ",") {
			if k = http.CanonicalHeaderKey(textTrim(k)); k != "" && httpguts.ValidTrailerHeader(k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 304:
		return "304"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// Write buffers p, or sends it with what is buffered when they do not fit
// the buffer; it blocks while the flow-control windows are closed.
func (w *responseWriter) Write(p []byte) (int, error) {
	if err := w.beforeWrite(len(p)); err != nil {
		return 0, err
	}
	switch {
	case w.rw.isHead:
	case w.fits(len(p)):
		w.rw.buf = append(w.rw.buf, p...)
	default:
		if err := w.send(p, false); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// WriteString is Write without copying s to a []byte when it fits the
// buffer.
func (w *responseWriter) WriteString(s string) (int, error) {
	if err := w.beforeWrite(len(s)); err != nil {
		return 0, err
	}
	switch {
	case w.rw.isHead:
	case w.fits(len(s)):
		w.rw.buf = append(w.rw.buf, s...)
	default:
		if err := w.send([]byte(s), false); err != nil {
			return 0, err
		}
	}
	return len(s), nil
}

// fits reports whether n more bytes fit the buffer, taking one from the
// Server's Buffers when there is none.
func (w *responseWriter) fits(n int) bool {
	rs := &w.rw
	if rs.buf == nil {
		rs.buf = w.sc.srv.bufs.get()
	}
	return len(rs.buf)+n <= cap(rs.buf)
}

// beforeWrite decides the status if the handler did not, and checks that
// n more bytes may be written.
func (w *responseWriter) beforeWrite(n int) error {
	rs := &w.rw
	switch {
	case rs.done:
		return errHandlerDone
	case rs.err != nil:
		return rs.err
	}
	if rs.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	switch {
	case !rs.bodyOK:
		return http.ErrBodyNotAllowed
	case rs.clen >= 0 && rs.written+int64(n) > rs.clen:
		return http.ErrContentLength
	}
	rs.written += int64(n)
	return nil
}

// Flush sends the response's HEADERS, if not yet sent, and what is
// buffered.
func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError is Flush, with its error (http.ResponseController's).
func (w *responseWriter) FlushError() error {
	rs := &w.rw
	if rs.done {
		return errHandlerDone
	}
	if rs.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.send(nil, false)
}

// EnableFullDuplex is http.ResponseController's: HTTP/2 always is.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// send sends the final HEADERS if not yet sent, then what is buffered,
// then p, with END_STREAM after them when end.
func (w *responseWriter) send(p []byte, end bool) error {
	rs := &w.rw
	if rs.err != nil {
		return rs.err
	}
	ss, c := (*serverStream)(w), w.sc.c
	data, rest := rs.buf, p
	if len(data) == 0 {
		data, rest = p, nil
	}
	endData := end && len(rest) == 0
	var err error
	switch {
	case !rs.sent:
		rs.sent = true
		fields := w.finalFields(data)
		ss.hmu.Lock()
		ss.finalSent = true
		ss.hmu.Unlock()
		err = c.writeHeadersData(ss.s, fields, data, endData)
		if rs.closeConn {
			// The handler (the proxy's drain) wants the connection
			// closed: in HTTP/2, a GOAWAY after this response's
			// HEADERS, and the close once no stream is open.
			w.sc.startGoAway()
		}
	case len(data) > 0 || endData:
		err = c.writeData(ss.s, data, endData)
	}
	if err == nil && len(rest) > 0 {
		err = c.writeData(ss.s, rest, end)
	}
	rs.buf = rs.buf[:0]
	rs.err = err
	return err
}

// finalFields completes the final header block: content-length, a sniffed
// content-type and the date, as net/http sends them.
func (w *responseWriter) finalFields(first []byte) []string {
	rs := &w.rw
	fields := rs.fields
	if rs.clen >= 0 && rs.bodyOK {
		fields = append(fields, "content-length", strconv.FormatInt(rs.clen, 10))
	}
	if !rs.hasType && rs.bodyOK && len(first) > 0 {
		fields = append(fields, "content-type", http.DetectContentType(first))
	}
	if !rs.hasDate {
		fields = append(fields, "date", w.sc.srv.date.get())
	}
	return fields
}

// finish ends the response when the handler returned: what is buffered,
// END_STREAM, and the trailers. A body shorter than its content-length
// resets the stream.
func (w *responseWriter) finish() {
	rs := &w.rw
	if rs.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	rs.done = true
	if rs.err != nil {
		return
	}
	if !rs.sent && rs.clen < 0 && rs.bodyOK && (len(rs.buf) > 0 || !rs.isHead) {
		rs.clen = int64(len(rs.buf))
		rs.written = rs.clen
	}
	ss, c := (*serverStream)(w), w.sc.c
	if rs.clen >= 0 && rs.written < rs.clen && rs.bodyOK && !rs.isHead {
		rs.err = fmt.Errorf("h2: handler wrote %d bytes of a %d-byte content-length", rs.written, rs.clen)
		c.reset(ss.s, http2.ErrCodeInternal, rs.err)
		return
	}
	trailers := w.trailerFields()
	if err := w.send(nil, len(trailers) == 0); err != nil || len(trailers) == 0 {
		return
	}
	rs.err = c.writeHeaders(ss.s, trailers, true)
}

// trailerFields is the trailers' header block: the announced keys and
// those named with http.TrailerPrefix, those with values.
func (w *responseWriter) trailerFields() []string {
	rs := &w.rw
	var fields []string
	add := func(k string, vv []string) {
		name := lower(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldName(name) && httpguts.ValidHeaderFieldValue(v) {
				fields = append(fields, name, v)
			}
		}
	}
	for _, k := range rs.trailers {
		add(k, rs.header[k])
	}
	for k, vv := range rs.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if name = http.CanonicalHeaderKey(name); httpguts.ValidTrailerHeader(name) {
				add(name, vv)
			}
		}
	}
	return fields
}
