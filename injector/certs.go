package injector

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certRecheck is how often the serving certificate's files are looked at
// again. Kubernetes updates a mounted Secret by swapping a symlink, within
// a minute or so of the Secret's change.
const certRecheck = time.Second

// CertFiles serves a TLS certificate from PEM files and picks up new
// content when the files change (cert-manager renewing the Secret), with
// no restart and no dropped connection. A change that does not load (the
// key of the old certificate with the new one, half-written files) is
// logged and the certificate in use stays. It is safe for concurrent use.
type CertFiles struct {
	certFile, keyFile string
	log               *zap.Logger
	now               func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' digest when cert was loaded
	checked time.Time
}

// NewCertFiles loads the pair; the error names the files.
func NewCertFiles(certFile, keyFile string, log *zap.Logger) (*CertFiles, error) {
	c := &CertFiles{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	stamp, err := c.fileStamp()
	if err != nil {
		return nil, fmt.Errorf("serving certificate %s, key %s: %w", certFile, keyFile, err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate %s, key %s: %w", certFile, keyFile, err)
	}
	c.cert, c.stamp, c.checked = &cert, stamp, c.now()
	return c, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= certRecheck {
		c.checked = now
		c.reload()
	}
	return c.cert, nil
}

// reload loads the files again if they changed since the last load.
func (c *CertFiles) reload() {
	stamp, err := c.fileStamp()
	if err != nil || stamp == c.stamp {
		return
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Retried on the next check, when the other file may have caught up.
		c.log.Warn("serving certificate changed but does not load; keeping the one in use",
			zap.String("cert", c.certFile), zap.String("key", c.keyFile), zap.Error(err))
		return
	}
	c.cert, c.stamp = &cert, stamp
	fields := []zap.Field{zap.String("cert", c.certFile)}
	if cert.Leaf != nil { // nil with GODEBUG=x509keypairleaf=0
		fields = append(fields, zap.Time("not_after", cert.Leaf.NotAfter))
	}
	c.log.Info("serving certificate reloaded", fields...)
}

// fileStamp is a digest of both files' contents: any change, even one
// that keeps the size and the modification time, is seen.
func (c *CertFiles) fileStamp() (string, error) {
	h := sha256.New()
	for _, f := range []string{c.certFile, c.keyFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(data)
		h.Write([]byte{0})
	}
	return string(h.Sum(nil)), nil
}
