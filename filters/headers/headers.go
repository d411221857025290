// Package headers is the HTTP filter that sets, adds and removes request
// and response headers, as fixed in its config.
//
// Within each direction changes apply in Envoy's order: remove, then set,
// then add. Request changes are made before the next filter runs. Response
// changes are made on the final response's headers right before they are
// written by whatever runs after this filter: the router copying the
// upstream's response, or a later filter replying itself (filters.Reply).
// A filter placed before this one answers unchanged. 1xx
// informational responses (100 Continue, 103 Early Hints) are left alone.
// An upgrade's 101 Switching Protocols is written by the router on the
// hijacked connection, so response changes do not reach it.
package headers

import (
	"net/http"
)

// Headers is the built filter. It is immutable and safe for concurrent use.
type Headers struct {
	request, response *edits
}

// ServeHTTP changes r's headers, then calls next with w wrapped so that the
// response's headers are changed when they are written. Either step is
// skipped when its direction has no changes.
func (f *Headers) ServeHTTP(w http.ResponseWriter, r *http.Request, next http.Handler) {
	f.request.apply(r.Header)
	if !f.response.empty() {
		w = &responseWriter{ResponseWriter: w, edits: f.response}
	}
	next.ServeHTTP(w, r)
}

// field is one header of Set or Add, its name canonical.
type field struct{ name, value string }

// edits are Changes validated and compiled: canonical names, in a fixed
// order.
type edits struct {
	remove   []string
	set, add []field
}

func (e *edits) empty() bool { return len(e.remove)+len(e.set)+len(e.add) == 0 }

// apply makes the changes to h.
func (e *edits) apply(h http.Header) {
	for _, k := range e.remove {
		delete(h, k)
	}
	for _, f := range e.set {
		h[f.name] = []string{f.value} // a fresh slice: later handlers may change it
	}
	for _, f := range e.add {
		h[f.name] = append(h[f.name], f.value)
	}
}

// responseWriter makes its edits to the header of the final response right
// before it is written. Like any ResponseWriter it is for one request's
// goroutine.
type responseWriter struct {
	http.ResponseWriter
	edits   *edits
	written bool // the final response's header was sent
}

// WriteHeader makes the edits unless code is informational (1xx but 101),
// then passes code on.
func (w *responseWriter) WriteHeader(code int) {
	if !w.written && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.edits.apply(w.Header())
		w.written = true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write sends the header (status 200) first if it was not sent, then b.
func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush sends the header (status 200) first if it was not sent, then
// flushes the wrapped writer when it can.
func (w *responseWriter) Flush() {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
