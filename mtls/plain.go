package mtls

import "crypto/tls"

// The TLS configs below are for connections outside the mesh, built here
// so that this package stays the only one that builds a tls.Config.

// WebhookServerConfig is the config of an HTTPS server that the Kubernetes
// API server calls (the injector's admission webhook): TLS 1.2 or later,
// the certificate from getCert, which may change between handshakes.
func WebhookServerConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert}
}

// ProbeClientConfig is the config of the sidecar's HTTPS probes of its own
// application on 127.0.0.1, run for kubelet. Like kubelet's, it does not
// verify the application's certificate: a probe asks whether the app
// answers, not who it is.
func ProbeClientConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // as kubelet's HTTPS probes
}
