//go:build !lean

package main

// kubeCommands are the subcommands that use the Kubernetes API.
func kubeCommands() []command {
	return []command{
		{"injector", "serve the mutating admission webhook that injects the sidecar", runInjector},
		{"discovery", "serve the discovery API: the endpoints and identities behind each destination, to the sidecars", runDiscovery},
		{"inject", "add the sidecar to Kubernetes manifests offline (-f FILE|-)", runInject},
	}
}
