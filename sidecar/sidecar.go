// Package sidecar is the sidecar's contract with the pod it runs in: the
// ports it captures traffic on and serves itself, the user and group it
// runs as, and the written forms of the port and address lists that
// `pillion init`'s flags and the injector's traffic.pillion.io annotations
// take. `pillion init` (the capture rules), `pillion proxy` (the listeners)
// and the injector (the pod it writes) take these from here, so that the
// three agree. ARCHITECTURE.md ("The contract") lists every value with
// its home; README.md ("Operating the sidecar", "`pillion init`") is the
// user's side of the same contract.
//
// It imports the standard library only: the lean sidecar build links it.
package sidecar

import "time"

// Ports the sidecar serves itself. Inbound traffic to them is never
// captured, and they can be neither capture ports nor included ports.
const (
	AdminPort      uint16 = 15000 // admin endpoint (loopback only)
	HealthPort     uint16 = 15021 // kubelet readiness and application probes
	PrometheusPort uint16 = 15090 // Prometheus scrape
)

// Paths on the ports above that others are told about: kubelet's
// readiness probe and Prometheus' scrape.
const (
	ReadyPath      = "/healthz/ready"    // on HealthPort
	PrometheusPath = "/stats/prometheus" // on PrometheusPort
)

// The defaults of the capture ports and of the proxy's identity, which
// flags and annotations may change: iptables redirects captured outbound
// and inbound TCP to the two ports, and exempts the user and group.
const (
	DefaultOutboundPort uint16 = 15001
	DefaultInboundPort  uint16 = 15006
	DefaultProxyUID     uint32 = 1337
	DefaultProxyGID     uint32 = 1337
)

// The defaults of the sidecar's drain on SIGTERM, to which the injector
// fits the pod's terminationGracePeriodSeconds.
const (
	// DefaultDrainPeriod is Istio's terminationDrainDuration: long enough
	// for the endpoint's removal to reach kube-proxy and the other
	// sidecars, which send new connections to the pod until then.
	DefaultDrainPeriod = 5 * time.Second
	// DefaultDrainTimeout is how long requests in flight may then take.
	DefaultDrainTimeout = 5 * time.Second
)

// ServedPort is one of the ports the sidecar serves itself, with the name
// rules and errors call it by.
type ServedPort struct {
	Port uint16
	Name string // "admin", "health" or "prometheus"
}

// ServedPorts lists AdminPort, HealthPort and PrometheusPort, in the order
// the capture rules exempt them. Each call returns a new slice.
func ServedPorts() []ServedPort {
	return []ServedPort{{AdminPort, "admin"}, {HealthPort, "health"}, {PrometheusPort, "prometheus"}}
}
