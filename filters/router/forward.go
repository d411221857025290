package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/pillionmesh/pillion/filters"
)

// forward sends out, the request of attempt a, and writes the response to
// w: what httputil.ReverseProxy did, without its copy of the request and
// its header. A response cut off after its headers were sent panics with
// http.ErrAbortHandler, which the server turns into a reset stream or a
// closed connection, so that the client never takes it for whole.
func (rt *Router) forward(w http.ResponseWriter, out *http.Request, a *attempt) {
	res, err := rt.env.Upstream.RoundTrip(out, a.ep, a.proto)
	a.respMu.Lock()
	a.headersDone = true
	a.respMu.Unlock()
	if err != nil {
		rt.fail(w, out, a, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		rt.upstreamTime(res, a)
		rt.switchProtocols(w, out, res, a)
		return
	}
	filters.RemoveHopByHopResponse(res.Header)
	rt.upstreamTime(res, a)
	h := w.Header()
	for k, vv := range res.Header {
		if old, ok := h[k]; ok {
			h[k] = append(old, vv...)
		} else {
			h[k] = vv
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	if err := rt.copyBody(w, res); err != nil {
		res.Body.Close()
		panic(http.ErrAbortHandler)
	}
	res.Body.Close() // now: the transport fills res.Trailer at the body's end
	if len(res.Trailer) == 0 {
		return
	}
	_ = http.NewResponseController(w).Flush()
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			h[k] = append(h[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		h[k] = append(h[k], vv...)
	}
}

// got1xx passes an informational response (100 Continue, 103 Early Hints)
// on to the client, unless the final response is in already. The
// transport calls it from its own goroutine.
func (a *attempt) got1xx(code int, header textproto.MIMEHeader) error {
	a.respMu.Lock()
	defer a.respMu.Unlock()
	if a.headersDone {
		return nil
	}
	h := a.w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	a.w.WriteHeader(code)
	clear(h)
	return nil
}

// copyBody copies the response's body to w, flushing after each write when
// the response streams (no length, or server-sent events), as
// httputil.ReverseProxy does.
func (rt *Router) copyBody(w http.ResponseWriter, res *http.Response) error {
	var flush func() error
	if res.ContentLength == -1 || isEventStream(res.Header) {
		flush = http.NewResponseController(w).Flush
	}
	buf := rt.bufs.Get()
	defer rt.bufs.Put(buf)
	for {
		n, rerr := res.Body.Read(buf[:])
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush != nil {
				if werr := flush(); werr != nil {
					return werr
				}
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			if !errors.Is(rerr, res.Request.Context().Err()) {
				rt.log.Debug("reading the upstream's response body", zap.Error(rerr))
			}
			return rerr
		}
	}
}

// isEventStream tells a Content-Type of text/event-stream, with or
// without parameters.
func isEventStream(h http.Header) bool {
	const es = "text/event-stream"
	ct := h["Content-Type"]
	if len(ct) == 0 || len(ct[0]) < len(es) || !strings.EqualFold(ct[0][:len(es)], es) {
		return false
	}
	rest := strings.TrimLeft(ct[0][len(es):], " \t")
	return rest == "" || rest[0] == ';'
}

// switchProtocols completes an upgrade (WebSocket…) the upstream accepted:
// it sends the 101 to the client over the connection taken from the
// server, then copies bytes both ways until either side is done.
func (rt *Router) switchProtocols(w http.ResponseWriter, out *http.Request, res *http.Response, a *attempt) {
	if got := upgradeType(res.Header); a.info.Upgrade == "" || !strings.EqualFold(got, a.info.Upgrade) {
		res.Body.Close()
		rt.fail(w, out, a, fmt.Errorf("router: the upstream switched to protocol %q when %q was asked for", got, a.info.Upgrade))
		return
	}
	up, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		res.Body.Close()
		rt.fail(w, out, a, errors.New("router: a 101 response whose body cannot be written"))
		return
	}
	defer up.Close()
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		rt.fail(w, out, a, fmt.Errorf("router: taking the client's connection for the protocol switch: %w", err))
		return
	}
	defer down.Close()
	stop := context.AfterFunc(out.Context(), func() { up.Close() })
	defer stop()
	h := w.Header()
	for k, vv := range res.Header {
		h[k] = append(h[k], vv...)
	}
	res.Header, res.Body = h, nil // res.Write sends the head only
	if err := res.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	errc := make(chan error, 2)
	go func() { errc <- copyClose(up, down) }()
	go func() { errc <- copyClose(down, up) }()
	if err := <-errc; err == nil {
		<-errc
	}
}

// copyClose copies src to dst, then half-closes dst when it can.
func copyClose(dst io.Writer, src io.Reader) error {
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errCopyDone
}

var errCopyDone = errors.New("router: copy done")

// upgradeType is the protocol h's Upgrade names, when its Connection says
// upgrade.
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
