package filters

import (
	"net/http"
)

// Observer is an http.ResponseWriter that passes everything through and
// remembers the status and the body bytes written. It implements Unwrap,
// so http.ResponseController reaches the wrapped writer's Flush and Hijack.
// Like any ResponseWriter it is for one request's goroutine.
type Observer struct {
	http.ResponseWriter
	status int
	bytes  int64
}

// Observe wraps w.
func Observe(w http.ResponseWriter) *Observer { return &Observer{ResponseWriter: w} }

// WriteHeader records the final status (1xx informational ones excepted)
// and passes it on.
func (o *Observer) WriteHeader(code int) {
	if o.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		o.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

// Write passes b on and counts what was written.
func (o *Observer) Write(b []byte) (int, error) {
	if o.status == 0 {
		o.status = http.StatusOK
	}
	n, err := o.ResponseWriter.Write(b)
	o.bytes += int64(n)
	return n, err
}

// Flush flushes the wrapped writer when it can.
func (o *Observer) Flush() {
	_ = http.NewResponseController(o.ResponseWriter).Flush()
}

// Unwrap returns the wrapped writer.
func (o *Observer) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// Status returns the final status sent, 0 when none was sent yet.
func (o *Observer) Status() int { return o.status }

// Written returns the body bytes written.
func (o *Observer) Written() int64 { return o.bytes }
