package mtls

import (
	"crypto/x509"
	"errors"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Failure is why a handshake between sidecars failed, as counted and
// logged.
type Failure uint8

// The failures Classify tells apart.
const (
	// FailureOther is anything not below (a malformed ClientHello, a reset).
	FailureOther Failure = iota
	// FailureNoSVID: we had no SVID of our own to present (the identity
	// source is not ready).
	FailureNoSVID
	// FailureNoPeerCertificate: the peer presented no certificate.
	FailureNoPeerCertificate
	// FailureOtherTrustDomain: the peer's SVID is of a trust domain we
	// have no bundle for, or one our Authorizer does not accept.
	FailureOtherTrustDomain
	// FailureUntrusted: the peer's certificate does not chain to its trust
	// domain's bundle, or is not a valid X.509-SVID.
	FailureUntrusted
	// FailureExpired: the peer's certificate has expired or is not yet
	// valid.
	FailureExpired
	// FailureUnauthorized: the peer's SVID verified but the Authorizer
	// refused its ID.
	FailureUnauthorized
	// FailurePeerRefused: the peer sent an alert: it refused us.
	FailurePeerRefused
	// FailureTimeout: the handshake did not finish in time.
	FailureTimeout
	// FailureWrongIdentity: the peer's SVID verified but is not the one
	// discovery announced for the endpoint dialled (AuthorizeExpected).
	FailureWrongIdentity

	NumFailures = iota
)

var failureNames = [NumFailures]string{
	"other", "no_svid", "no_peer_certificate", "other_trust_domain", "untrusted",
	"expired", "unauthorized", "peer_refused", "timeout", "wrong_identity",
}

// String returns the failure's name as metrics label it: "expired", …
func (f Failure) String() string {
	if int(f) < len(failureNames) {
		return failureNames[f]
	}
	return "other"
}

// ErrNoSVID marks the errors of a handshake for which our own Source had
// no SVID.
var ErrNoSVID = errors.New("no SVID of our own yet")

// Classify tells why a handshake failed from its error.
func Classify(err error) Failure {
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	msg := err.Error()
	switch {
	case errors.Is(err, ErrNoSVID):
		return FailureNoSVID
	case errors.Is(err, os.ErrDeadlineExceeded):
		return FailureTimeout
	case errors.Is(err, ErrWrongIdentity):
		return FailureWrongIdentity
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return FailureExpired
	case errors.Is(err, ErrOtherTrustDomain),
		// go-spiffe's bundle set says this only as text.
		strings.Contains(msg, "no X.509 bundle for trust domain"):
		return FailureOtherTrustDomain
	case errors.As(err, &unknown), errors.As(err, &invalid), strings.Contains(msg, "x509svid:"):
		return FailureUntrusted
	case strings.Contains(msg, "client didn't provide a certificate"),
		strings.Contains(msg, "peer presented no certificate"):
		return FailureNoPeerCertificate
	case strings.HasPrefix(msg, "unexpected ID") || strings.HasPrefix(msg, "unexpected trust domain"):
		return FailureUnauthorized
	case strings.Contains(msg, "remote error: tls:"):
		return FailurePeerRefused
	}
	return FailureOther
}

// markedSource marks its SVID errors with ErrNoSVID, so that Classify
// can tell a failed handshake that was our side's fault.
type markedSource struct{ Source }

func (m markedSource) GetX509SVID() (*x509svid.SVID, error) {
	s, err := m.Source.GetX509SVID()
	if err != nil {
		return nil, errors.Join(ErrNoSVID, err)
	}
	return s, nil
}
