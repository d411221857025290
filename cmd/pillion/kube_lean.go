//go:build lean

package main

// kubeCommands: none in the lean build, the binary of the sidecar image
// (make build-lean), which links no Kubernetes API machinery.
func kubeCommands() []command { return nil }
