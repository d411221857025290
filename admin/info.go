package admin

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Cluster is one upstream pool, as /clusters shows it.
type Cluster struct {
	// Name names the pool, e.g. "outbound|8080||reviews.default.svc.cluster.local".
	Name string
	// Endpoints are the pool's upstream hosts; /clusters sorts them by Address.
	Endpoints []Endpoint
}

// Endpoint is one upstream host of a pool and its counters. A counter the pool does not keep is
// left zero and shown as 0.
type Endpoint struct {
	Address         string // host:port
	Protocol        string // the pool's connection behaviour: "http1", "http2" or "tcp"
	ActiveConns     int    // open connections (cx_active)
	IdleConns       int    // open connections carrying no request (cx_idle)
	TotalConns      uint64 // connections opened since start (cx_total)
	ConnectFailures uint64 // dials that failed (cx_connect_fail)
	ActiveRequests  int    // requests or streams in flight (rq_active)
	TotalRequests   uint64 // requests or streams sent since start (rq_total)

	// Balanced is set on the endpoints of a destination discovery
	// announced (a Service's): what its balancer knows of each.
	Balanced *Balanced
}

// Balanced is what a balancer knows of one endpoint.
type Balanced struct {
	Weight uint32
	Zone   string
	// Health is Envoy's eds_health_status: HEALTHY (ready), DRAINING
	// (terminating) or UNHEALTHY (not ready).
	Health string
	// Ejected: outlier detection took it out (Envoy's
	// /failed_outlier_check health flag).
	Ejected bool
	// EWMA is the peak-EWMA latency estimate the balancer compares.
	EWMA time.Duration
	// Failures counts failed requests (5xx, resets, connect failures).
	Failures uint64
	// Meshed: a pillion sidecar serves it; Identity is the SPIFFE ID it
	// must present.
	Meshed   bool
	Identity string
	// Workload is its pod's workload as discovery named it,
	// "name.namespace"; "" when not known.
	Workload string
}

// healthFlags is Envoy's health_flags text: "healthy", or the reasons it is
// not, joined by "/".
func (b *Balanced) healthFlags() string {
	var flags []string
	switch b.Health {
	case "DRAINING":
		flags = append(flags, "/pending_dynamic_removal")
	case "UNHEALTHY":
		flags = append(flags, "/eds_health_status")
	}
	if b.Ejected {
		flags = append(flags, "/failed_outlier_check")
	}
	if len(flags) == 0 {
		return "healthy"
	}
	return strings.Join(flags, "")
}

// Listener is one bound listener, as /listeners shows it.
type Listener struct {
	Name    string // e.g. "inbound" or "outbound"
	Address string // host:port it is bound to
}

// clusters answers /clusters. The text format is Envoy's: for each cluster, sorted by name,
// "<cluster>::observability_name::<cluster>", then for each endpoint, sorted by address,
// "<cluster>::<host:port>::<stat>::<value>" for cx_active, cx_connect_fail, cx_idle, cx_total,
// rq_active, rq_total and protocol. ?format=json gives Envoy's shape:
// {"cluster_statuses":[{"name","host_statuses":[{"address":{"socket_address":{"address",
// "port_value"}},"protocol","stats":[{"name","type":"COUNTER"|"GAUGE","value"}]}]}]}.
func (s *server) clusters(w http.ResponseWriter, r *http.Request) {
	if s.src.Clusters == nil {
		unavailable(w, r)
		return
	}
	cs := slices.SortedFunc(slices.Values(s.src.Clusters()), func(a, b Cluster) int { return cmp.Compare(a.Name, b.Name) })
	asJSON, ok := textOrJSON(w, r)
	if !ok {
		return
	}
	if !asJSON {
		var b strings.Builder
		for _, c := range cs {
			fmt.Fprintf(&b, "%s::observability_name::%s\n", c.Name, c.Name)
			for _, e := range sortedEndpoints(c) {
				for _, st := range endpointStats(e) {
					fmt.Fprintf(&b, "%s::%s::%s::%d\n", c.Name, e.Address, st.Name, st.Value)
				}
				fmt.Fprintf(&b, "%s::%s::protocol::%s\n", c.Name, e.Address, e.Protocol)
				if bal := e.Balanced; bal != nil {
					fmt.Fprintf(&b, "%s::%s::rq_error::%d\n", c.Name, e.Address, bal.Failures)
					fmt.Fprintf(&b, "%s::%s::health_flags::%s\n", c.Name, e.Address, bal.healthFlags())
					fmt.Fprintf(&b, "%s::%s::weight::%d\n", c.Name, e.Address, bal.Weight)
					fmt.Fprintf(&b, "%s::%s::zone::%s\n", c.Name, e.Address, bal.Zone)
					fmt.Fprintf(&b, "%s::%s::ewma_ms::%.3f\n", c.Name, e.Address, float64(bal.EWMA.Microseconds())/1000)
					fmt.Fprintf(&b, "%s::%s::identity::%s\n", c.Name, e.Address, bal.Identity)
					fmt.Fprintf(&b, "%s::%s::workload::%s\n", c.Name, e.Address, bal.Workload)
				}
			}
		}
		text(w, http.StatusOK, "%s", b.String())
		return
	}

	type hostStatus struct {
		Address  jsonAddress    `json:"address"`
		Protocol string         `json:"protocol"`
		Stats    []endpointStat `json:"stats"`
		*balancedJSON
	}
	type clusterStatus struct {
		Name         string       `json:"name"`
		HostStatuses []hostStatus `json:"host_statuses"`
	}
	out := struct {
		ClusterStatuses []clusterStatus `json:"cluster_statuses"`
	}{ClusterStatuses: []clusterStatus{}}
	for _, c := range cs {
		st := clusterStatus{Name: c.Name, HostStatuses: []hostStatus{}}
		for _, e := range sortedEndpoints(c) {
			st.HostStatuses = append(st.HostStatuses, hostStatus{
				Address: socketAddress(e.Address), Protocol: e.Protocol, Stats: endpointStats(e),
				balancedJSON: e.Balanced.json(),
			})
		}
		out.ClusterStatuses = append(out.ClusterStatuses, st)
	}
	writeJSON(w, out)
}

// balancedJSON is Balanced in Envoy's host_status shape, plus pillion's
// own ewma_ms, identity and workload.
type balancedJSON struct {
	HealthStatus struct {
		EDSHealthStatus    string `json:"eds_health_status"`
		FailedOutlierCheck bool   `json:"failed_outlier_check,omitempty"`
	} `json:"health_status"`
	Weight   uint32 `json:"weight"`
	Locality struct {
		Zone string `json:"zone,omitempty"`
	} `json:"locality"`
	EWMAMillis float64 `json:"ewma_ms"`
	Failures   uint64  `json:"rq_error"`
	Identity   string  `json:"identity,omitempty"`
	Workload   string  `json:"workload,omitempty"`
}

func (b *Balanced) json() *balancedJSON {
	if b == nil {
		return nil
	}
	j := &balancedJSON{Weight: b.Weight, EWMAMillis: float64(b.EWMA.Microseconds()) / 1000, Failures: b.Failures, Identity: b.Identity, Workload: b.Workload}
	j.HealthStatus.EDSHealthStatus, j.HealthStatus.FailedOutlierCheck = b.Health, b.Ejected
	j.Locality.Zone = b.Zone
	return j
}

// endpointStat is one per-host counter of /clusters, named as Envoy names it.
type endpointStat struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value uint64 `json:"value"`
}

func endpointStats(e Endpoint) []endpointStat {
	return []endpointStat{
		{"cx_active", "GAUGE", uint64(max(e.ActiveConns, 0))},
		{"cx_connect_fail", "COUNTER", e.ConnectFailures},
		{"cx_idle", "GAUGE", uint64(max(e.IdleConns, 0))},
		{"cx_total", "COUNTER", e.TotalConns},
		{"rq_active", "GAUGE", uint64(max(e.ActiveRequests, 0))},
		{"rq_total", "COUNTER", e.TotalRequests},
	}
}

func sortedEndpoints(c Cluster) []Endpoint {
	return slices.SortedFunc(slices.Values(c.Endpoints), func(a, b Endpoint) int { return cmp.Compare(a.Address, b.Address) })
}

// listeners answers /listeners: "<name>::<host:port>" lines sorted by name, as Envoy prints them;
// ?format=json gives {"listener_statuses":[{"name","local_address":{"socket_address":{"address",
// "port_value"}}}]}.
func (s *server) listeners(w http.ResponseWriter, r *http.Request) {
	if s.src.Listeners == nil {
		unavailable(w, r)
		return
	}
	ls := slices.SortedFunc(slices.Values(s.src.Listeners()), func(a, b Listener) int { return cmp.Compare(a.Name, b.Name) })
	asJSON, ok := textOrJSON(w, r)
	if !ok {
		return
	}
	if !asJSON {
		var b strings.Builder
		for _, l := range ls {
			fmt.Fprintf(&b, "%s::%s\n", l.Name, l.Address)
		}
		text(w, http.StatusOK, "%s", b.String())
		return
	}
	type listenerStatus struct {
		Name         string      `json:"name"`
		LocalAddress jsonAddress `json:"local_address"`
	}
	out := struct {
		ListenerStatuses []listenerStatus `json:"listener_statuses"`
	}{ListenerStatuses: []listenerStatus{}}
	for _, l := range ls {
		out.ListenerStatuses = append(out.ListenerStatuses, listenerStatus{Name: l.Name, LocalAddress: socketAddress(l.Address)})
	}
	writeJSON(w, out)
}

// jsonAddress is Envoy's address shape. An address that is not host:port keeps its whole text in
// "address" and has no "port_value".
type jsonAddress struct {
	SocketAddress struct {
		Address   string `json:"address"`
		PortValue uint16 `json:"port_value,omitempty"`
	} `json:"socket_address"`
}

func socketAddress(hostport string) jsonAddress {
	var a jsonAddress
	a.SocketAddress.Address = hostport
	if host, port, err := net.SplitHostPort(hostport); err == nil {
		if p, err := strconv.ParseUint(port, 10, 16); err == nil {
			a.SocketAddress.Address, a.SocketAddress.PortValue = host, uint16(p)
		}
	}
	return a
}

// textOrJSON reads ?format=: text (the default) or json. Any other format is answered with 400
// naming the valid ones, and ok is false.
func textOrJSON(w http.ResponseWriter, r *http.Request) (asJSON, ok bool) {
	switch f := r.URL.Query().Get("format"); f {
	case "", "text":
		return false, true
	case "json":
		return true, true
	default:
		text(w, http.StatusBadRequest, "admin: unknown format %q: valid formats are text, json\n", f)
		return false, false
	}
}

// configDump answers /config_dump with ConfigDump's value as indented JSON. The caller redacts
// secrets; this path shows what it is given.
func (s *server) configDump(w http.ResponseWriter, r *http.Request) {
	if s.src.ConfigDump == nil {
		unavailable(w, r)
		return
	}
	writeJSON(w, s.src.ConfigDump())
}

// writeJSON answers 200 with v as indented JSON, or 500 naming the error if v cannot be marshalled.
func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		text(w, http.StatusInternalServerError, "admin: encoding JSON: %v\n", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}
