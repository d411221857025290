// Package mtls is the sidecar's identity: where its X.509-SVID and trust
// bundle come from (the SPIFFE Workload API, or PEM files), and the TLS
// configurations of the hops between sidecars, built on go-spiffe's
// tlsconfig. It is the only package of pillion that builds a tls.Config.
//
// Between sidecars, TLS 1.3 only; both sides present an X.509-SVID and each
// verifies the other's against the trust bundle of the peer's trust domain,
// then asks an Authorizer whether that SPIFFE ID may be talked to. ALPN says
// what the connection carries: pooled HTTP/2 (ProtoHTTP2), one HTTP/1.1
// connection that may be upgraded (ProtoHTTP1), or one opaque TCP stream
// (ProtoTCP).
//
// Certificates are fetched from the Source at every handshake, so a rotated
// SVID or bundle is used by the next connection and established connections
// carry on with what they were set up with.
package mtls

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The ALPN protocols of connections between sidecars. A ClientHello that
// offers one of them is for the receiving sidecar; any other TLS is the
// application's own and is passed through.
const (
	ProtoHTTP2 = "pillion/h2"      // HTTP/2 carrying many requests
	ProtoHTTP1 = "pillion/http1.1" // HTTP/1.1, for requests that upgrade (WebSocket)
	ProtoTCP   = "pillion/tcp"     // one opaque TCP stream
)

// Protos are the ALPN protocols a sidecar accepts, in its order of
// preference.
func Protos() []string { return []string{ProtoHTTP2, ProtoHTTP1, ProtoTCP} }

// Source is where a sidecar's identity comes from: its own X.509-SVID and
// the trust bundles that peers' SVIDs are verified against.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// An Authorizer decides whether a peer whose SVID verified may be talked
// to. It returns nil to allow.
type Authorizer = tlsconfig.Authorizer

// AuthorizeID allows exactly id.
func AuthorizeID(id spiffeid.ID) Authorizer { return tlsconfig.AuthorizeID(id) }

// AuthorizeOneOf allows the listed IDs.
func AuthorizeOneOf(ids ...spiffeid.ID) Authorizer { return tlsconfig.AuthorizeOneOf(ids...) }

// AuthorizeMemberOf allows every ID of trust domain td.
func AuthorizeMemberOf(td spiffeid.TrustDomain) Authorizer { return tlsconfig.AuthorizeMemberOf(td) }

// AuthorizeSameTrustDomain allows the IDs of the trust domain of src's own
// SVID at the time of the handshake: the default between sidecars, where
// finer policy is the authz filter's job.
func AuthorizeSameTrustDomain(src x509svid.Source) Authorizer {
	return tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		own, err := src.GetX509SVID()
		if err != nil {
			return fmt.Errorf("no SVID of our own to compare trust domains with: %w", err)
		}
		if id.TrustDomain() != own.ID.TrustDomain() {
			return fmt.Errorf("%w: peer %q, ours %q", ErrOtherTrustDomain, id, own.ID.TrustDomain())
		}
		return nil
	})
}

// AuthorizeExpected allows exactly id, the identity discovery announced for
// the endpoint being dialled; any other is refused with ErrWrongIdentity,
// which Classify tells apart (FailureWrongIdentity).
func AuthorizeExpected(id spiffeid.ID) Authorizer {
	return tlsconfig.AdaptMatcher(func(got spiffeid.ID) error {
		if got != id {
			return fmt.Errorf("%w: it presented %q, discovery announced %q", ErrWrongIdentity, got, id)
		}
		return nil
	})
}

// ErrWrongIdentity is the error of AuthorizeExpected for a peer that is
// not the workload it was meant to be.
var ErrWrongIdentity = errors.New("peer is not the workload discovery announced")

// ErrOtherTrustDomain is the error of AuthorizeSameTrustDomain for a peer
// of another trust domain.
var ErrOtherTrustDomain = errors.New("peer is of another trust domain")

// ClientConfig returns the configuration of a connection to a peer
// sidecar that will carry proto (one of the Proto constants). The peer
// must present an SVID that verifies against src's bundles and that authz
// allows.
func ClientConfig(src Source, authz Authorizer, proto string) *tls.Config {
	c := tlsconfig.MTLSClientConfig(markedSource{src}, src, authz)
	tls13(c)
	c.NextProtos = []string{proto}
	return c
}

// ServerConfig returns the configuration of the inbound side of
// connections from peer sidecars: it accepts the Proto protocols and
// requires a client SVID that verifies against src's bundles and that
// authz allows. Sessions are never resumed: each connection verifies the
// peer's certificate as it is now.
func ServerConfig(src Source, authz Authorizer) *tls.Config {
	c := tlsconfig.MTLSServerConfig(markedSource{src}, src, authz)
	tls13(c)
	c.NextProtos = Protos()
	c.SessionTicketsDisabled = true
	return c
}

func tls13(c *tls.Config) {
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = tls.VersionTLS13
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("mtls: the peer presented no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
