package proxy

import (
	"net/http"
	"time"

	"github.com/pillionmesh/pillion/filters"
)

// requestHandler is the handler of direction dir's HTTP servers.
func (s *Server) requestHandler(dir Direction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveRequest(dir, w, r) })
}

// serveRequest is where every HTTP request enters the filter chain.
func (s *Server) serveRequest(dir Direction, w http.ResponseWriter, r *http.Request) {
	m := r.Context().Value(connKey{}).(connMeta)
	info := &filters.Info{
		Direction:   dir,
		Start:       time.Now(),
		Destination: m.dst,
		Source:      m.src,
		Peer:        m.peer,
	}
	info.Upgrade = filters.RemoveHopByHop(r.Header)
	if dir == Outbound || m.peer == "" {
		// From the application, or a caller that is not a peer sidecar.
		filters.RemoveInternal(r.Header)
	}
	var said peerSaid
	if dir == Inbound {
		said = takePeerSaid(r.Header, m.peer)
	}
	if dir == Inbound && info.Upgrade == "" && s.life.draining.Load() {
		// The drain period (lifecycle.go): the client is told to go. HTTP/1
		// closes after this answer; both HTTP/2 servers take it for a
		// graceful GOAWAY (and send no Connection header). The router
		// adds the upstream's headers to these, never removes them.
		w.Header().Set("Connection", "close")
	}
	rc := s.config.Load()
	var h http.Handler = rc.chain(dir)
	if r.ProtoMajor == 1 {
		// Proxied HTTP/1 requests may be answered while their body still
		// streams in (and gRPC-Web-like clients rely on it).
		_ = http.NewResponseController(w).EnableFullDuplex()
		if m.framing != nil {
			switch why := m.framing.check(); why {
			case framingOK:
			case framingLost:
				w.Header().Set("Connection", "close")
			default:
				h = refusal(framingReasons[why])
			}
		}
	}
	s.stats.Dir[dir].Requests.Add(1)
	s.serveRecorded(rc.tracer.Handler(h), w, r.WithContext(filters.NewContext(r.Context(), info)), info, said)
}

// refusal answers a request whose framing is ambiguous: 400 DPE, the
// connection closed, nothing forwarded.
type refusal string

func (why refusal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	filters.Reply(w, r, http.StatusBadRequest, filters.DownstreamProtocolError, string(why))
}
