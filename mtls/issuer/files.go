package issuer

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Names of the files WriteFiles writes: what go-spiffe's
// x509svid.Load(SVIDFile, SVIDKeyFile) and x509bundle.Load(td, BundleFile)
// read.
const (
	// SVIDFile holds the SVID's certificate chain, leaf first, PEM
	// CERTIFICATE blocks, mode 0644.
	SVIDFile = "svid.pem"
	// SVIDKeyFile holds the SVID's private key, PEM "PRIVATE KEY" (PKCS #8),
	// mode 0600.
	SVIDKeyFile = "svid-key.pem"
	// BundleFile holds the trust domain's CA certificates, PEM CERTIFICATE
	// blocks, mode 0644.
	BundleFile = "bundle.pem"
)

// Files are the paths WriteFiles wrote.
type Files struct {
	SVID, Key, Bundle string
}

// WriteFiles writes svid and bundle into dir (created 0755 if needed) as
// BundleFile, SVIDKeyFile and SVIDFile, in that order, each atomically
// (temporary file in dir, then rename), so a reader never sees half a file.
// The order is for readers that poll the folder: a new certificate never
// appears before the bundle that verifies it, nor before its key. A reader
// that reads the key and then the certificate while the files are being
// replaced can still see a mismatched pair and should try again.
func WriteFiles(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) (Files, error) {
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return Files{}, fmt.Errorf("issuer: encode SVID: %w", err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return Files{}, fmt.Errorf("issuer: encode bundle: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("issuer: %w", err)
	}
	f := Files{
		SVID:   filepath.Join(dir, SVIDFile),
		Key:    filepath.Join(dir, SVIDKeyFile),
		Bundle: filepath.Join(dir, BundleFile),
	}
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{f.Bundle, bundlePEM, 0o644},
		{f.Key, keyPEM, 0o600},
		{f.SVID, certPEM, 0o644},
	} {
		if err := writeFileAtomic(w.path, w.data, w.perm); err != nil {
			return Files{}, fmt.Errorf("issuer: %w", err)
		}
	}
	return f, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// folder, synced and renamed over path, so path holds the old content or the
// new, never a part. The folder is synced too, so the rename survives a
// crash.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	// Some file systems cannot sync a folder: EINVAL.
	if err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
