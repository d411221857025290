package injector

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filewatch"
)

// certRecheck is how often the serving certificate's files are looked at
// again. Kubernetes updates a mounted Secret by swapping a symlink, within
// a minute or so of the Secret's change.
const certRecheck = time.Second

// CertFiles serves a TLS certificate from PEM files and picks up new
// content when the files change (cert-manager renewing the Secret), with
// no restart and no dropped connection, as package filewatch does: a
// change is taken once two reads agree. A change that does not load (the
// key of the old certificate with the new one, a file missing) is logged
// once and the certificate in use stays. It is safe for concurrent use.
type CertFiles struct {
	certFile, keyFile string
	log               *zap.Logger
	watch             *filewatch.Watcher
	cert              atomic.Pointer[tls.Certificate] // the pair served
}

// NewCertFiles loads the pair; the error names the files. Run watches
// them.
func NewCertFiles(certFile, keyFile string, log *zap.Logger) (*CertFiles, error) {
	c := &CertFiles{certFile: certFile, keyFile: keyFile, log: log}
	var current [][]byte
	for _, f := range []string{certFile, keyFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("injector: serving certificate %s, key %s: %w", certFile, keyFile, err)
		}
		current = append(current, data)
	}
	cert, err := tls.X509KeyPair(current[0], current[1])
	if err != nil {
		return nil, fmt.Errorf("injector: serving certificate %s, key %s: %w", certFile, keyFile, err)
	}
	c.cert.Store(&cert)
	c.watch = filewatch.New(filewatch.Options{
		Paths:    []string{certFile, keyFile},
		Interval: certRecheck,
		Current:  current,
		Apply:    c.apply,
		Refused:  c.refused,
		Log:      log,
	})
	return c, nil
}

// Run watches the files until ctx ends.
func (c *CertFiles) Run(ctx context.Context) { c.watch.Run(ctx) }

// Reload reads the files now and serves them if they load, changed or
// not (the injector calls it on SIGHUP).
func (c *CertFiles) Reload() { c.watch.Force() }

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cert.Load(), nil
}

// apply serves the pair contents (cert, key) if it loads.
func (c *CertFiles) apply(contents [][]byte) error {
	cert, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return err
	}
	c.cert.Store(&cert)
	fields := []zap.Field{zap.String("cert", c.certFile)}
	if cert.Leaf != nil { // nil with GODEBUG=x509keypairleaf=0
		fields = append(fields, zap.Time("not_after", cert.Leaf.NotAfter))
	}
	c.log.Info("serving certificate reloaded", fields...)
	return nil
}

// refused logs why changed files are not served; tried again when they
// change (the other file may not have caught up yet).
func (c *CertFiles) refused(err error) {
	c.log.Warn("serving certificate changed but does not load; keeping the one in use",
		zap.String("cert", c.certFile), zap.String("key", c.keyFile), zap.Error(err))
}
