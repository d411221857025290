package resolve

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Kind is what discovery said stands behind a destination.
type Kind uint8

// The kinds of destination.
const (
	// Unknown: discovery knows nothing there; traffic goes to the original
	// destination, meshed or not as the config's mesh.networks say.
	Unknown Kind = iota
	// Service: a Service's cluster IP and port, balanced over its
	// endpoints.
	Service
	// Pod: a pod's own IP, one endpoint.
	Pod
)

func (k Kind) String() string {
	switch k {
	case Service:
		return "service"
	case Pod:
		return "pod"
	}
	return "unknown"
}

// Protocol is discovery's hint about a destination's protocol.
type Protocol uint8

// The protocol hints.
const (
	Detect Protocol = iota // tell it from the first bytes
	Opaque                 // opaque TCP: never read, never served as HTTP
	HTTP                   // HTTP/1.x or HTTP/2
)

// State is what discovery last said of one destination. It is immutable.
type State struct {
	Kind     Kind
	Service  upstream.Service
	Protocol Protocol
	// Endpoints are the destination's endpoints, validated, each carrying
	// Service.
	Endpoints []balance.Endpoint
	// Err is set when discovery's answer was not valid: the destination
	// then has no endpoint (requests fail with "no healthy upstream"), and
	// nothing is sent in plaintext to what may be a meshed pod.
	Err error
	// Dropped says why a field that only telemetry reads (an endpoint's
	// workload) was left out, the first of them; the endpoints stand.
	Dropped error
}

// maxEndpoints bounds one answer; a larger one is refused as invalid.
const maxEndpoints = 10000

// decode validates one answer of discovery into the destination it is
// about and its state. An error means the message cannot even say which
// destination it is about, and is dropped; an answer that names its
// destination but is otherwise invalid is a State with Err set.
func decode(td spiffeid.TrustDomain, m *discoveryv1.WatchResponse) (netip.AddrPort, *State, error) {
	dst, err := netip.ParseAddrPort(m.GetDestination())
	if err != nil {
		return netip.AddrPort{}, nil, fmt.Errorf("resolve: answer for %q: destination: %w", m.GetDestination(), err)
	}
	dst = unmap(dst)
	st, err := decodeState(td, m.GetState())
	if err != nil {
		return dst, &State{Kind: st.Kind, Service: st.Service, Err: fmt.Errorf("resolve: discovery's answer for %s: %w", dst, err)}, nil
	}
	return dst, st, nil
}

// decodeState validates d. On error the returned State still says the kind
// and Service, for the log and /clusters.
func decodeState(td spiffeid.TrustDomain, d *discoveryv1.Destination) (*State, error) {
	st := &State{}
	if d == nil {
		return st, fmt.Errorf("state: missing")
	}
	switch d.GetKind() {
	case discoveryv1.Destination_UNKNOWN:
		return st, nil // endpoints, if any, are ignored
	case discoveryv1.Destination_SERVICE:
		st.Kind = Service
	case discoveryv1.Destination_POD:
		st.Kind = Pod
	default:
		return st, fmt.Errorf("state.kind: %d is not a kind this sidecar knows", d.GetKind())
	}
	st.Service = upstream.Service{Namespace: d.GetService().GetNamespace(), Name: d.GetService().GetName()}
	if st.Kind == Service && (st.Service.Name == "" || st.Service.Namespace == "") {
		return st, fmt.Errorf("state.service: a SERVICE destination needs the Service's namespace and name")
	}
	switch d.GetProtocol() {
	case discoveryv1.ProtocolHint_PROTOCOL_UNSPECIFIED:
	case discoveryv1.ProtocolHint_OPAQUE:
		st.Protocol = Opaque
	case discoveryv1.ProtocolHint_HTTP:
		st.Protocol = HTTP
	default:
		return st, fmt.Errorf("state.protocol: %d is not a hint this sidecar knows", d.GetProtocol())
	}
	eps := d.GetEndpoints()
	if len(eps) > maxEndpoints {
		return st, fmt.Errorf("state.endpoints: %d endpoints, at most %d", len(eps), maxEndpoints)
	}
	st.Endpoints = make([]balance.Endpoint, 0, len(eps))
	for i, e := range eps {
		ep, err := decodeEndpoint(td, e, st.Service)
		if err != nil {
			return st, fmt.Errorf("state.endpoints[%d]: %w", i, err)
		}
		// The workload is for telemetry only: one that does not validate
		// is dropped (its labels read "unknown"), and the endpoint stands.
		if ep.Workload, err = decodeWorkload(e); err != nil && st.Dropped == nil {
			st.Dropped = fmt.Errorf("state.endpoints[%d].%w", i, err)
		}
		st.Endpoints = append(st.Endpoints, ep)
	}
	return st, nil
}

func decodeEndpoint(td spiffeid.TrustDomain, e *discoveryv1.Endpoint, svc upstream.Service) (balance.Endpoint, error) {
	addr, err := netip.ParseAddrPort(e.GetAddress())
	if err != nil {
		return balance.Endpoint{}, fmt.Errorf("address: %w", err)
	}
	addr = unmap(addr)
	if addr.Port() == 0 || !addr.Addr().IsGlobalUnicast() {
		return balance.Endpoint{}, fmt.Errorf("address: %s is not a unicast address and port", addr)
	}
	ep := balance.Endpoint{
		Endpoint:    upstream.Endpoint{Addr: addr, Meshed: e.GetMeshed(), Service: svc},
		Weight:      max(e.GetWeight(), 1),
		Zone:        e.GetZone(),
		Ready:       e.GetReady(),
		Serving:     e.GetServing(),
		Terminating: e.GetTerminating(),
	}
	if !ep.Meshed {
		return ep, nil
	}
	id, err := spiffeid.FromString(e.GetIdentity())
	if err != nil {
		return balance.Endpoint{}, fmt.Errorf("identity: %q: a meshed endpoint needs the SPIFFE ID it must present: %w", e.GetIdentity(), err)
	}
	if id.TrustDomain() != td {
		return balance.Endpoint{}, fmt.Errorf("identity: %q is not of our trust domain %q", id, td)
	}
	ep.Identity = id.String()
	return ep, nil
}

// decodeWorkload validates what e says of its pod's workload, its
// namespace the pod's; nil when e names none.
func decodeWorkload(e *discoveryv1.Endpoint) (*upstream.Workload, error) {
	w := e.GetWorkload()
	if w == nil {
		return nil, nil
	}
	u := &upstream.Workload{Name: w.GetName(), Namespace: e.GetPod().GetNamespace(), App: w.GetApp(), Version: w.GetVersion()}
	if err := u.Validate(); err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	return u, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ErrNotHostPort is SplitAddress's error for an address that is not
// host:port.
var ErrNotHostPort = errors.New("want host:port")

// SplitAddress checks discovery's address as `pillion proxy
// --discovery-address` takes it, host:port with a port of 1-65535, and
// returns the host. The injector checks the address it will pass with it,
// so the two never disagree.
func SplitAddress(addr string) (host string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "", ErrNotHostPort
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("%q is not a port number (1-65535)", port)
	}
	return host, nil
}
