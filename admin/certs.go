package admin

import (
	"crypto/x509"
	"net/http"
	"time"
)

// Certs is the identity the proxy holds, as /certs shows it. The zero Certs means no identity
// (none configured, or not loaded yet).
type Certs struct {
	// SVID is the workload's own X.509-SVID leaf; nil when there is none.
	SVID *CertInfo
	// Bundle holds the trust bundle's CA certificates.
	Bundle []CertInfo
}

// CertInfo describes one certificate. CertInfoFrom fills it from an *x509.Certificate.
type CertInfo struct {
	SpiffeID  string // the first URI SAN (spiffe://...); empty when the certificate has none
	Serial    string // serial number in lowercase hex, as Envoy prints it
	NotBefore time.Time
	NotAfter  time.Time
}

// CertInfoFrom describes c. It keeps no reference to c.
func CertInfoFrom(c *x509.Certificate) CertInfo {
	ci := CertInfo{NotBefore: c.NotBefore, NotAfter: c.NotAfter}
	if c.SerialNumber != nil {
		ci.Serial = c.SerialNumber.Text(16)
	}
	if len(c.URIs) > 0 {
		ci.SpiffeID = c.URIs[0].String()
	}
	return ci
}

// jsonCert is one certificate in Envoy's /certs shape, plus seconds_until_expiration.
type jsonCert struct {
	SerialNumber           string    `json:"serial_number"`
	SubjectAltNames        []jsonSAN `json:"subject_alt_names"`
	DaysUntilExpiration    int64     `json:"days_until_expiration"`
	SecondsUntilExpiration int64     `json:"seconds_until_expiration"`
	ValidFrom              string    `json:"valid_from"`
	ExpirationTime         string    `json:"expiration_time"`
}

type jsonSAN struct {
	URI string `json:"uri"`
}

// certs answers /certs with Envoy's shape:
//
//	{"certificates":[{"cert_chain":[<SVID>],"ca_cert":[<bundle CAs>...]}]}
//
// where each certificate is {"serial_number","subject_alt_names":[{"uri"}],"days_until_expiration",
// "seconds_until_expiration","valid_from","expiration_time"} with RFC 3339 UTC times; the time left
// counts from Sources.Now, in whole days and seconds, negative once expired. With no identity the
// answer is {"certificates":[]}.
func (s *server) certs(w http.ResponseWriter, r *http.Request) {
	if s.src.Certs == nil {
		unavailable(w, r)
		return
	}
	type entry struct {
		CertChain []jsonCert `json:"cert_chain"`
		CACert    []jsonCert `json:"ca_cert"`
	}
	out := struct {
		Certificates []entry `json:"certificates"`
	}{Certificates: []entry{}}

	c := s.src.Certs()
	if c.SVID != nil || len(c.Bundle) > 0 {
		now := s.src.Now()
		e := entry{CertChain: []jsonCert{}, CACert: []jsonCert{}}
		if c.SVID != nil {
			e.CertChain = append(e.CertChain, certJSON(*c.SVID, now))
		}
		for _, ca := range c.Bundle {
			e.CACert = append(e.CACert, certJSON(ca, now))
		}
		out.Certificates = append(out.Certificates, e)
	}
	writeJSON(w, out)
}

func certJSON(c CertInfo, now time.Time) jsonCert {
	left := c.NotAfter.Sub(now)
	j := jsonCert{
		SerialNumber:           c.Serial,
		SubjectAltNames:        []jsonSAN{},
		DaysUntilExpiration:    int64(left / (24 * time.Hour)),
		SecondsUntilExpiration: int64(left / time.Second),
		ValidFrom:              c.NotBefore.UTC().Format(time.RFC3339),
		ExpirationTime:         c.NotAfter.UTC().Format(time.RFC3339),
	}
	if c.SpiffeID != "" {
		j.SubjectAltNames = append(j.SubjectAltNames, jsonSAN{URI: c.SpiffeID})
	}
	return j
}
