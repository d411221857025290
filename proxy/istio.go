package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/router"
	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Istio's standard metrics (proxy/istiometrics), recorded beside the
// sidecar's own: per HTTP request as it ends, per opaque TCP connection as
// it opens and closes. HTTP connections get no istio_tcp_* series, as
// Istio's sidecars, whose TCP stats filter runs on TCP proxy chains only.

// istioRequest is an HTTP request whose Istio metrics are recorded when it
// ends.
type istioRequest struct {
	said peerSaid // inbound: what the peer sidecar said
	grpc bool
	body *countedBody // nil: the request has no body
}

// startIstio prepares r, the proxy's own copy of the request, for its
// Istio metrics: its body is counted as the filters read it. nil when the
// family is off.
func (s *Server) startIstio(r *http.Request, said peerSaid) *istioRequest {
	if s.istio == nil || !s.istio.Enabled() {
		return nil
	}
	ir := &istioRequest{said: said, grpc: isGRPC(r.Header.Get("Content-Type"))}
	if r.Body != nil && r.Body != http.NoBody {
		ir.body = &countedBody{ReadCloser: r.Body}
		r.Body = ir.body
	}
	return ir
}

// endIstio records the request of info that ended with status (0: none
// sent) and whose response went through o.
func (s *Server) endIstio(ir *istioRequest, info *filters.Info, o *filters.Observer, status int) {
	req := istiometrics.Request{
		Conn:          s.istioConn(info.Direction, info.Endpoint(), info.Peer),
		GRPC:          ir.grpc,
		Code:          status,
		Flags:         info.Flags().String(),
		Duration:      time.Since(info.Start),
		ResponseBytes: o.Written(),
	}
	if ir.body != nil {
		req.RequestBytes = ir.body.n.Load()
	}
	if info.Direction == Inbound {
		req.Conn.Service, req.Conn.PeerWorkload = ir.said.service, ir.said.workload
	}
	if ir.grpc {
		req.GRPCStatus = grpcStatus(o.Header())
	}
	s.istio.RecordRequest(&req)
}

// istioConn is what the Istio labels of a request or connection in
// direction d follow from: outbound the endpoint picked (ep) and its
// workload as discovery named it, inbound the caller's SPIFFE ID (peer; ""
// when not mTLS).
func (s *Server) istioConn(d Direction, ep upstream.Endpoint, peer string) istiometrics.Conn {
	if d == Inbound {
		c := istiometrics.Conn{Reporter: istiometrics.Destination, Peer: peer}
		if peer != "" {
			c.Local = s.localID()
		}
		return c
	}
	c := istiometrics.Conn{Reporter: istiometrics.Source, Service: ep.Service}
	if w := ep.Workload; w != nil {
		c.PeerWorkload = istiometrics.Workload{Name: w.Name, Namespace: w.Namespace, App: w.App, Version: w.Version}
	}
	if ep.Meshed {
		c.Local, c.Peer = s.localID(), ep.Identity
	}
	return c
}

// localID is the sidecar's own SPIFFE ID, "" without an SVID.
func (s *Server) localID() string {
	if s.cfg.Identity == nil {
		return ""
	}
	svid, err := s.cfg.Identity.GetX509SVID()
	if err != nil {
		return ""
	}
	if c := s.idCache.Load(); c != nil && c.svid == svid {
		return c.id
	}
	c := &cachedID{svid: svid, id: svid.ID.String()}
	s.idCache.Store(c)
	return c.id
}

// cachedID is the string of an SVID's ID, kept while the SVID is current.
type cachedID struct {
	svid *x509svid.SVID
	id   string
}

// peerSaid is what a peer sidecar's router said of an inbound request, for
// its Istio metrics.
type peerSaid struct {
	service  upstream.Service
	workload istiometrics.Workload
}

// takePeerSaid removes the router's ServiceHeader and WorkloadHeader from
// an inbound request's header h, sent by peer sidecar peer (its SPIFFE
// ID), and returns what they say. Only peer sidecars' headers reach here
// (the proxy drops pillion- headers from other callers); a value that
// does not parse is ignored.
func takePeerSaid(h http.Header, peer string) peerSaid {
	said := peerSaid{service: takeService(h)}
	if v := h[workloadKey]; len(v) > 0 {
		delete(h, workloadKey)
		said.workload, _ = istiometrics.ParsePeer(v[0], peer)
	}
	return said
}

var workloadKey = http.CanonicalHeaderKey(router.WorkloadHeader)

// takeService removes the router's ServiceHeader from h and returns the
// Service it names: what the peer sidecar's discovery picked this pod
// for. A value that is not name.namespace of DNS labels is ignored.
func takeService(h http.Header) upstream.Service {
	v := h[serviceKey]
	if len(v) == 0 {
		return upstream.Service{}
	}
	delete(h, serviceKey)
	name, ns, ok := strings.Cut(v[0], ".")
	if !ok || !dnsLabel(name) || !dnsLabel(ns) {
		return upstream.Service{}
	}
	return upstream.Service{Namespace: ns, Name: name}
}

var serviceKey = http.CanonicalHeaderKey(router.ServiceHeader)

// dnsLabel reports whether s is an RFC 1123 label, as Kubernetes names
// Services and namespaces.
func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// isGRPC reports whether a request's content-type is gRPC's, as Envoy
// tells it: application/grpc, alone or with a +suffix or parameters.
func isGRPC(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// grpcStatus is the grpc-status the response of h ended with: a trailer
// (announced, or sent with http.TrailerPrefix) or, for a trailers-only
// response, a header.
func grpcStatus(h http.Header) string {
	if v := h[http.TrailerPrefix+"Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	return h.Get("Grpc-Status")
}

// countedBody counts the bytes read from a request body. It passes on
// proxy/h2's CompleteBody, which the router uses to send whole bodies at
// once.
type countedBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// Complete tells whether the whole body has arrived, when the body can.
func (b *countedBody) Complete() (int, bool) {
	if cb, ok := b.ReadCloser.(interface{ Complete() (int, bool) }); ok {
		return cb.Complete()
	}
	return 0, false
}

// istioTCPReportEvery is how often, at most, a spliced opaque connection's
// bytes reach istio_tcp_*_bytes_total while it lasts (Istio's stats
// filter reports TCP every 5 s by default, its tcp_reporting_duration).
const istioTCPReportEvery = 5 * time.Second

// openIstioTCP records the opaque connection cn opened to ep; nil
// without metrics. The peer is the one the mTLS handshake proved.
func (s *Server) openIstioTCP(cn *conn, ep upstream.Endpoint) *istiometrics.TCP {
	if s.istio == nil {
		return nil
	}
	c := s.istioConn(cn.dir, ep, cn.peer)
	if cn.dir == Outbound && cn.peer != "" {
		c.Peer = cn.peer
	}
	return s.istio.OpenTCP(c)
}

// failedIstioTCP records the opaque connection cn whose upstream (ep, or
// none picked) could not be reached, with flag.
func (s *Server) failedIstioTCP(cn *conn, ep upstream.Endpoint, flag filters.Flags) {
	if s.istio == nil {
		return
	}
	c := s.istioConn(cn.dir, ep, cn.peer)
	if cn.dir == Outbound {
		c.Local, c.Peer = "", "" // no handshake took place
	}
	s.istio.FailedTCP(c, flag.String())
}
