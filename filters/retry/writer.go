package retry

import (
	"net/http"
)

// holdState is where a holdWriter's attempt stands.
type holdState uint8

const (
	pending   holdState = iota // no final status yet
	committed                  // passed on to the client
	discarded                  // to be retried
)

// holdWriter is the ResponseWriter of an attempt that may be retried. It
// keeps the attempt's headers to itself until the final status is known;
// then it passes the attempt on to w, or discards it whole when retriable
// says the attempt is to be retried. Like any ResponseWriter it is for one
// goroutine.
type holdWriter struct {
	w         http.ResponseWriter
	header    http.Header // the attempt's, until committed
	retriable func(status int) bool
	state     holdState
	informed  bool // a 1xx response went through, with header in w's
}

// Header returns the attempt's header map; once the attempt is committed,
// w's (where trailers go).
func (h *holdWriter) Header() http.Header {
	if h.state == committed {
		return h.w.Header()
	}
	return h.header
}

// WriteHeader sends a 1xx informational response straight on; a final
// status decides the attempt's fate.
func (h *holdWriter) WriteHeader(code int) {
	switch {
	case h.state == committed:
		h.w.WriteHeader(code)
	case h.state == discarded:
	case code >= 100 && code < 200 && code != http.StatusSwitchingProtocols:
		replaceHeader(h.w.Header(), h.header)
		h.informed = true
		h.w.WriteHeader(code)
	case code >= 100 && h.retriable(code):
		// An invalid code falls through to w, whose WriteHeader panics.
		h.state = discarded
	default:
		h.state = committed
		replaceHeader(h.w.Header(), h.header)
		h.w.WriteHeader(code)
	}
}

// Write sends b on, or drops it when the attempt is discarded. Like
// net/http's, it implies status 200 when none was written.
func (h *holdWriter) Write(b []byte) (int, error) {
	if h.state == pending {
		h.WriteHeader(http.StatusOK)
	}
	if h.state == discarded {
		return len(b), nil
	}
	return h.w.Write(b)
}

// Flush flushes w once the attempt is committed. Like net/http's, it
// implies status 200 when none was written.
func (h *holdWriter) Flush() {
	if h.state == pending {
		h.WriteHeader(http.StatusOK)
	}
	if h.state == committed {
		_ = http.NewResponseController(h.w).Flush()
	}
}

// Unwrap returns w, for http.ResponseController.
func (h *holdWriter) Unwrap() http.ResponseWriter { return h.w }

// finish ends the attempt and reports whether it was discarded. An attempt
// that wrote no status is final: its headers go to w, for the status 200
// net/http sends when the handler returns.
func (h *holdWriter) finish() bool {
	if h.state == pending {
		h.state = committed
		replaceHeader(h.w.Header(), h.header)
	}
	return h.state == discarded
}

// replaceHeader makes dst hold what src holds.
func replaceHeader(dst, src http.Header) {
	clear(dst)
	for k, v := range src {
		dst[k] = v
	}
}
