// Package discovery is `pillion discovery`: it tells sidecars what stands
// behind the destinations their applications connect to, from the
// Kubernetes API.
//
// The pipeline:
//
//	informers  Services, EndpointSlices and Pods, each trimmed as it
//	           arrives to the few fields an answer needs (trim.go)
//	Index      indexes over them: Service by cluster IP, EndpointSlice by
//	           Service and by endpoint address, Pod by IP (index.go)
//	Lookup     ip:port → Destination: a Service port's endpoints with their
//	           conditions, zone, whether a pillion sidecar runs there, the
//	           SPIFFE ID it must present and its pod's workload (package
//	           workload, the injector's rule); a pod; or unknown (lookup.go)
//	Server     the Discovery.Watch gRPC service: one stream per sidecar,
//	           subscriptions by ip:port, each answered at once and again,
//	           whole, when it changes (server.go, stream.go)
//
// Every answer records the topics it read (an address, a Service, a pod);
// every informer event names the topics it touched. Answers are shared by
// every stream subscribed to the same destination (answers.go): an event
// invalidates the answers that read one of its topics, the first holder
// to ask computes the new state once, and each stream sends it, at most
// once per ServerConfig.Coalesce, only if it changed. An event that
// touches nothing anyone watches costs a few map lookups.
//
// Why on demand, by the address the application used, and why whole
// states rather than deltas: ARCHITECTURE.md, "Discovery: on demand, by
// the address the application used".
//
// The SPIFFE IDs announced are in the trust domain of discovery's own
// SVID, the same identity its gRPC server presents (NewGRPCServer); it
// answers only clients of that trust domain.
package discovery
