package istiometrics

import (
	"cmp"
	"strings"

	"github.com/pillionmesh/pillion/proxy/upstream"
)

// Unknown is the value of a label nothing is known of, as Istio writes it.
const Unknown = "unknown"

// DefaultCluster is the source_cluster and destination_cluster of the
// sidecar's own side by default: Istio's default CLUSTER_ID.
const DefaultCluster = "Kubernetes"

// clusterDomain ends destination_service, the Service's host name, as
// Istio writes it (name.namespace.svc.cluster.local).
const clusterDomain = "svc.cluster.local"

// The labels, in Istio's order (istio/proxy's istio_stats filter). The
// HTTP metrics have all of them; the TCP metrics all but response_code and
// grpc_response_status.
const (
	lReporter = iota
	lSourceWorkload
	lSourceWorkloadNamespace
	lSourcePrincipal
	lSourceApp
	lSourceVersion
	lSourceCanonicalService
	lSourceCanonicalRevision
	lSourceCluster
	lDestinationWorkload
	lDestinationWorkloadNamespace
	lDestinationPrincipal
	lDestinationApp
	lDestinationVersion
	lDestinationService
	lDestinationServiceName
	lDestinationServiceNamespace
	lDestinationCanonicalService
	lDestinationCanonicalRevision
	lDestinationCluster
	lRequestProtocol
	lResponseFlags
	lConnectionSecurityPolicy
	numConnLabels // the TCP metrics' labels end here
)

// The HTTP metrics' own labels.
const (
	lResponseCode = numConnLabels + iota
	lGRPCResponseStatus
	numLabels
)

// labelNames are the names of the labels, by index.
var labelNames = [numLabels]string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
	"response_code", "grpc_response_status",
}

// HTTPLabels returns the label names of the HTTP metrics, in order.
func HTTPLabels() []string { return append([]string(nil), labelNames[:]...) }

// TCPLabels returns the label names of the TCP metrics, in order.
func TCPLabels() []string { return append([]string(nil), labelNames[:numConnLabels]...) }

// The environment variables the injector sets on the proxy container, one
// per field of Workload (`pillion proxy` reads them as its flags'
// defaults).
const (
	EnvName      = "PILLION_WORKLOAD_NAME"
	EnvNamespace = "PILLION_WORKLOAD_NAMESPACE"
	EnvApp       = "PILLION_WORKLOAD_APP"
	EnvVersion   = "PILLION_WORKLOAD_VERSION"
	EnvCluster   = "PILLION_CLUSTER_ID"
)

// Workload is the sidecar's own pod as Istio's labels name it. The
// injector fills it from the pod (flags --workload-name and friends of
// `pillion proxy`); empty fields are written as "unknown".
type Workload struct {
	// Name is the workload: a Deployment's pod gives the Deployment's
	// name, a Job's the Job's, a pod of no controller its own name.
	Name string
	// Namespace is the pod's namespace.
	Namespace string
	// App is the pod's app.kubernetes.io/name or app label.
	App string
	// Version is the pod's app.kubernetes.io/version or version label.
	Version string
	// Cluster is the cluster's name (Istio's CLUSTER_ID); empty is
	// DefaultCluster.
	Cluster string
}

// FieldError is Validate's error: Field is the Workload field that is
// wrong ("Name", "Namespace", "App", "Version", "Cluster").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	return "istiometrics: workload " + e.Field + ": " + e.Err.Error()
}

// Unwrap returns why the field is wrong.
func (e *FieldError) Unwrap() error { return e.Err }

// Validate checks that every field of w can be a label value
// (upstream.CheckValue) and returns a *FieldError naming the first that
// cannot.
func (w Workload) Validate() error {
	for _, f := range []struct{ field, v string }{
		{"Name", w.Name}, {"Namespace", w.Namespace}, {"App", w.App}, {"Version", w.Version}, {"Cluster", w.Cluster},
	} {
		if err := upstream.CheckValue(f.v); err != nil {
			return &FieldError{Field: f.field, Err: err}
		}
	}
	return nil
}

// canonicalService is the workload's canonical service as Istio derives it
// without the service.istio.io labels: the app, else the workload's name.
func (w Workload) canonicalService() string { return cmp.Or(w.App, w.Name) }

// canonicalRevision is the version, else "latest", as Istio's.
func (w Workload) canonicalRevision() string { return cmp.Or(w.Version, "latest") }

// Peer is w as the sidecar tells peer sidecars: "name;app;version;cluster"
// (the namespace the peer reads from the SPIFFE ID, which is verified).
// "" when w has no name.
func (w Workload) Peer() string {
	if w.Name == "" {
		return ""
	}
	return w.Name + ";" + w.App + ";" + w.Version + ";" + w.Cluster
}

// ParsePeer reads what the peer sidecar of SPIFFE ID peer said of its
// workload (Peer), its namespace the ID's. A value that is not four label
// values (Kubernetes': at most 63 of [A-Za-z0-9._-]) says nothing.
func ParsePeer(v, peer string) (Workload, bool) {
	f := strings.Split(v, ";")
	if len(f) != 4 || f[0] == "" {
		return Workload{}, false
	}
	for _, s := range f {
		if !labelValue(s) {
			return Workload{}, false
		}
	}
	return Workload{Name: f[0], Namespace: namespaceOf(peer), App: f[1], Version: f[2], Cluster: f[3]}, true
}

// labelValue reports whether s can be a Kubernetes label value (the empty
// one included): at most 63 of [A-Za-z0-9._-].
func labelValue(s string) bool {
	if len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// Reporter is which sidecar reports: the caller's (source, outbound) or
// the callee's (destination, inbound).
type Reporter uint8

// The reporters.
const (
	Source Reporter = iota
	Destination
)

func (r Reporter) String() string {
	if r == Destination {
		return "destination"
	}
	return "source"
}

// Conn is what the sidecar knows of the other side of a request or
// connection; it is comparable, and a request's labels follow from it and
// the response.
type Conn struct {
	Reporter Reporter
	// Local is the sidecar's own SPIFFE ID when the hop was mTLS between
	// sidecars, else "".
	Local string
	// Peer is the other sidecar's SPIFFE ID when the hop was mTLS, else
	// "": outbound the one discovery announced and the handshake checked,
	// inbound the caller's.
	Peer string
	// Service is the destination Service: outbound the one discovery
	// named, inbound the one the peer sidecar said it called; the zero
	// Service when none.
	Service upstream.Service
	// PeerWorkload is the other side's workload: outbound the endpoint's
	// as discovery named it, inbound the caller's as its sidecar said
	// (ParsePeer); zero when none is known.
	PeerWorkload Workload
}

// namespaceOf is the namespace in a SPIFFE ID of the form
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, as Istio
// reads it; "" when it has none.
func namespaceOf(id string) string {
	_, rest, ok := strings.Cut(id, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// connLabels fills the labels of c up to numConnLabels, but for
// request_protocol and response_flags, which the caller sets.
func (m *Metrics) connLabels(l *[numLabels]string, c Conn) {
	self, peerNS := m.local, namespaceOf(c.Peer)
	l[lReporter] = c.Reporter.String()
	principal := func(id string) string { return cmp.Or(id, Unknown) }
	switch c.Reporter {
	case Source:
		l[lSourceWorkload] = cmp.Or(self.Name, Unknown)
		l[lSourceWorkloadNamespace] = cmp.Or(self.Namespace, Unknown)
		l[lSourcePrincipal] = principal(c.Local)
		l[lSourceApp] = cmp.Or(self.App, Unknown)
		l[lSourceVersion] = cmp.Or(self.Version, Unknown)
		l[lSourceCanonicalService] = cmp.Or(self.canonicalService(), Unknown)
		l[lSourceCanonicalRevision] = self.canonicalRevision()
		l[lSourceCluster] = cmp.Or(self.Cluster, DefaultCluster)
		// The endpoint's workload as discovery named it, where Istio reads
		// the peer's metadata; its namespace, else the peer's SPIFFE ID's.
		pw := c.PeerWorkload
		peerNS = cmp.Or(pw.Namespace, peerNS)
		l[lDestinationWorkload] = cmp.Or(pw.Name, Unknown)
		l[lDestinationWorkloadNamespace] = cmp.Or(peerNS, Unknown)
		l[lDestinationPrincipal] = principal(c.Peer)
		l[lDestinationApp] = cmp.Or(pw.App, Unknown)
		l[lDestinationVersion] = cmp.Or(pw.Version, Unknown)
		if s := c.Service; s.Name != "" {
			l[lDestinationService] = s.Name + "." + s.Namespace + "." + clusterDomain
			l[lDestinationServiceName] = s.Name
			l[lDestinationServiceNamespace] = s.Namespace
		} else {
			// Istio would fall back to the Host header: unbounded, and an
			// address as often as a name.
			l[lDestinationService] = Unknown
			l[lDestinationServiceName] = Unknown
			l[lDestinationServiceNamespace] = cmp.Or(peerNS, Unknown)
		}
		l[lDestinationCanonicalService] = cmp.Or(pw.canonicalService(), Unknown)
		l[lDestinationCanonicalRevision] = pw.canonicalRevision()
		l[lDestinationCluster] = Unknown
		if pw.Name != "" {
			// Discovery answers for the sidecar's own cluster.
			l[lDestinationCluster] = cmp.Or(self.Cluster, DefaultCluster)
		}
		// The client side cannot tell the policy, as Istio's.
		l[lConnectionSecurityPolicy] = Unknown
	case Destination:
		// Of the caller, its SPIFFE ID, and what its sidecar said of its
		// workload (none: a caller outside the mesh, or an opaque stream).
		pw := c.PeerWorkload
		l[lSourceWorkload] = cmp.Or(pw.Name, Unknown)
		l[lSourceWorkloadNamespace] = cmp.Or(peerNS, Unknown)
		l[lSourcePrincipal] = principal(c.Peer)
		l[lSourceApp] = cmp.Or(pw.App, Unknown)
		l[lSourceVersion] = cmp.Or(pw.Version, Unknown)
		l[lSourceCanonicalService] = cmp.Or(pw.canonicalService(), Unknown)
		l[lSourceCanonicalRevision] = pw.canonicalRevision()
		l[lSourceCluster] = Unknown
		if pw.Name != "" {
			l[lSourceCluster] = cmp.Or(pw.Cluster, DefaultCluster)
		}
		l[lDestinationWorkload] = cmp.Or(self.Name, Unknown)
		l[lDestinationWorkloadNamespace] = cmp.Or(self.Namespace, Unknown)
		l[lDestinationPrincipal] = principal(c.Local)
		l[lDestinationApp] = cmp.Or(self.App, Unknown)
		l[lDestinationVersion] = cmp.Or(self.Version, Unknown)
		canonical := cmp.Or(self.canonicalService(), Unknown)
		if s := c.Service; s.Name != "" {
			l[lDestinationService] = s.Name + "." + s.Namespace + "." + clusterDomain
			l[lDestinationServiceName] = s.Name
		} else {
			// A caller that did not say (not a peer sidecar, or not
			// through a Service): Istio's fallback, the canonical service.
			l[lDestinationService] = canonical
			l[lDestinationServiceName] = canonical
		}
		// Istio's: the pod's own namespace.
		l[lDestinationServiceNamespace] = cmp.Or(self.Namespace, Unknown)
		l[lDestinationCanonicalService] = canonical
		l[lDestinationCanonicalRevision] = self.canonicalRevision()
		l[lDestinationCluster] = cmp.Or(self.Cluster, DefaultCluster)
		if c.Peer != "" && c.Local != "" {
			l[lConnectionSecurityPolicy] = "mutual_tls"
		} else {
			l[lConnectionSecurityPolicy] = "none"
		}
	}
}
