package main

import (
	"flag"
	"os"

	"github.com/pillionmesh/pillion/proxy/istiometrics"
)

// addWorkloadFlags adds the flags naming the sidecar's own pod in Istio's
// metric labels, into w; their defaults come from the environment the
// injector sets (injector/workload.go).
func addWorkloadFlags(fs *flag.FlagSet, w *istiometrics.Workload) {
	env := func(name, dflt string) string {
		if v, ok := os.LookupEnv(name); ok {
			return v
		}
		return dflt
	}
	fs.StringVar(&w.Name, "workload-name", env(istiometrics.EnvName, ""),
		"the pod's workload (its Deployment, Job…, else the pod), for Istio's source_workload and destination_workload labels; $"+istiometrics.EnvName+", set by the injector; empty: unknown")
	fs.StringVar(&w.Namespace, "workload-namespace", env(istiometrics.EnvNamespace, ""),
		"the pod's namespace, for Istio's *_workload_namespace labels; $"+istiometrics.EnvNamespace+"; empty: unknown")
	fs.StringVar(&w.App, "workload-app", env(istiometrics.EnvApp, ""),
		"the pod's app.kubernetes.io/name or app label, for Istio's *_app and *_canonical_service labels; $"+istiometrics.EnvApp+"; empty: unknown")
	fs.StringVar(&w.Version, "workload-version", env(istiometrics.EnvVersion, ""),
		"the pod's app.kubernetes.io/version or version label, for Istio's *_version and *_canonical_revision labels; $"+istiometrics.EnvVersion+"; empty: unknown")
	fs.StringVar(&w.Cluster, "cluster-id", env(istiometrics.EnvCluster, istiometrics.DefaultCluster),
		"the cluster's name, for Istio's *_cluster labels (Istio's CLUSTER_ID); $"+istiometrics.EnvCluster)
}
