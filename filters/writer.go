package filters

import (
	"bufio"
	"net"
	"net/http"
)

// Observer is an http.ResponseWriter that passes everything through and
// remembers the status and the body bytes written. It implements Unwrap,
// so http.ResponseController reaches the wrapped writer's other abilities.
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

// Hijack hijacks the wrapped writer's connection, when it can. The router
// does that for an upgrade the upstream agreed to, and writes the
// upstream's 101 Switching Protocols on the connection itself, past the
// ResponseWriter: Status then reports 101.
func (o *Observer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(o.ResponseWriter).Hijack()
	if err == nil && o.status == 0 {
		o.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

// Unwrap returns the wrapped writer.
func (o *Observer) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// Status returns the final status sent (101 after a hijack), 0 when none
// was sent yet.
func (o *Observer) Status() int { return o.status }

// Written returns the body bytes written.
func (o *Observer) Written() int64 { return o.bytes }
