package injector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// servingPair returns a self-signed certificate with serial, and its key,
// as PEM.
func servingPair(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "pillion-injector.pillion-system.svc"},
		DNSNames:     []string{"pillion-injector.pillion-system.svc"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// servedSerial returns the serial of the certificate c serves.
func servedSerial(t *testing.T, c *CertFiles) int64 {
	t.Helper()
	cert, err := c.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cert == nil || len(cert.Certificate) == 0 {
		t.Fatal("no certificate served")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Int64()
}

// TestCertFilesReload: a new pair is served once two checks in a row
// have read it, not before; a certificate whose key has not arrived yet is
// not served (the one in use stays, with one warning, not one per check)
// until the key comes; Reload (SIGHUP) reads the files at once.
func TestCertFilesReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	pairs := map[int64][2][]byte{}
	for serial := int64(1); serial <= 4; serial++ {
		c, k := servingPair(t, serial)
		pairs[serial] = [2][]byte{c, k}
	}
	writeFile := func(path string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(certFile, pairs[1][0])
	writeFile(keyFile, pairs[1][1])

	core, logs := observer.New(zapcore.InfoLevel)
	c, err := NewCertFiles(certFile, keyFile, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}

	served := int64(1)
	for _, step := range []struct {
		name   string
		write  string // which files of pair serial to write: "cert", "key" or "both"
		serial int64  // the pair written
		check  func() // what looks at the files: nil for none
		want   int64  // serial served after the step
		warned bool   // a "does not load" warning was logged
	}{
		{name: "loaded", want: 1},
		{name: "new pair, first check", write: "both", serial: 2, check: c.watch.Poll, want: 1},
		{name: "new pair, second check", check: c.watch.Poll, want: 2},
		{name: "unchanged files", check: c.watch.Poll, want: 2},
		{name: "new cert without its key, first check", write: "cert", serial: 3, check: c.watch.Poll, want: 2},
		{name: "new cert without its key, second check", check: c.watch.Poll, want: 2, warned: true},
		{name: "still without its key", check: c.watch.Poll, want: 2},
		{name: "its key arrived, first check", write: "key", serial: 3, check: c.watch.Poll, want: 2},
		{name: "its key arrived, second check", check: c.watch.Poll, want: 3},
		{name: "new pair, reloaded", write: "both", serial: 4, check: c.Reload, want: 4},
	} {
		if step.write == "both" || step.write == "cert" {
			writeFile(certFile, pairs[step.serial][0])
		}
		if step.write == "both" || step.write == "key" {
			writeFile(keyFile, pairs[step.serial][1])
		}
		if step.check != nil {
			step.check()
		}
		if got := servedSerial(t, c); got != step.want {
			t.Errorf("%s: serving serial %d, want %d", step.name, got, step.want)
		}
		var warnings, reloads []observer.LoggedEntry
		for _, e := range logs.TakeAll() {
			switch e.Message {
			case "serving certificate changed but does not load; keeping the one in use":
				warnings = append(warnings, e)
			case "serving certificate reloaded":
				reloads = append(reloads, e)
			default:
				t.Errorf("%s: unexpected log %q", step.name, e.Message)
			}
		}
		if step.warned != (len(warnings) == 1) || len(warnings) > 1 {
			t.Errorf("%s: %d warnings, want one: %v", step.name, len(warnings), step.warned)
		}
		for _, w := range warnings {
			if f := w.ContextMap(); f["cert"] != certFile || f["key"] != keyFile || f["error"] != "tls: private key does not match public key" {
				t.Errorf("%s: warning fields %v, want the files and the error", step.name, f)
			}
		}
		if reloaded := step.want != served; reloaded != (len(reloads) == 1) || len(reloads) > 1 {
			t.Errorf("%s: %d reloads logged, want one: %v", step.name, len(reloads), reloaded)
		}
		served = step.want
	}
}

// TestNewCertFilesErrors: a pair that cannot be loaded is an error naming
// the file at fault.
func TestNewCertFilesErrors(t *testing.T) {
	dir := t.TempDir()
	cert1, key1 := servingPair(t, 1)
	_, key2 := servingPair(t, 2)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	otherKey, garbage := filepath.Join(dir, "other.key"), filepath.Join(dir, "garbage.pem")
	missing := filepath.Join(dir, "missing.pem")
	for path, data := range map[string][]byte{certFile: cert1, keyFile: key1, otherKey: key2, garbage: []byte("not PEM\n")} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name, cert, key, want string
	}{
		{"missing cert", missing, keyFile, "injector: serving certificate " + missing + ", key " + keyFile + ": open " + missing + ": no such file or directory"},
		{"missing key", certFile, missing, "injector: serving certificate " + certFile + ", key " + missing + ": open " + missing + ": no such file or directory"},
		{"garbage cert", garbage, keyFile, "injector: serving certificate " + garbage + ", key " + keyFile + ": tls: failed to find any PEM data in certificate input"},
		{"garbage key", certFile, garbage, "injector: serving certificate " + certFile + ", key " + garbage + ": tls: failed to find any PEM data in key input"},
		{"another cert's key", certFile, otherKey, "injector: serving certificate " + certFile + ", key " + otherKey + ": tls: private key does not match public key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewCertFiles(tt.cert, tt.key, zap.NewNop())
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v, want %s", err, tt.want)
			}
			if c != nil {
				t.Errorf("got a CertFiles with the error")
			}
		})
	}
}
