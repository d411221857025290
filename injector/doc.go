// Package injector adds the pillion sidecar to pods. Its core is a pure
// function, Inject, from (pod, namespace, config) to the injected pod;
// Patch turns that into the RFC 6902 JSON patch an admission webhook
// answers with. Two front ends share it:
//
//   - Webhook, the admission.k8s.io/v1 handler `pillion injector` serves
//     over HTTPS (CertFiles gives it a certificate it re-reads on change);
//   - Manifests, the offline injection of `pillion inject -f FILE`, which
//     applies the same patch to every pod template it finds.
//
// The pipeline, for one pod:
//
//	decide       skip: already injected (pillion.io/status), excluded
//	             namespace, hostNetwork, opted out, not asked
//	parseOptions the pod's annotations, validated with the rules of the
//	             flags they become; every bad one named in the error
//	checkNames   refuse a pod already using the sidecar's names
//	rewriteProbes  the app's HTTP/TCP/gRPC probes → the sidecar's
//	             :15021/app-health/<container>/<kind>
//	volumes, initContainer, proxyContainer
//	             identity (CSI, hostPath or Secret), config (downward API),
//	             `pillion init` with the exclusions, `pillion proxy`
//	             (native sidecar, or classic with a postStart wait)
//	             pointed at `pillion discovery` unless the config's
//	             discovery.enabled is false
//	annotate     status, default container, Prometheus scrape, config
//
// Config is the injector's validated config file (RawConfig as written).
package injector
