package issuer

// A CA folder holds at most three CAs: the active one (CACertFile and
// CAKeyFile), a prepared next one (NextCACertFile, NextCAKeyFile) and the
// previous one's certificate (PreviousCACertFile). Every file is written
// atomically (temporary file, then rename) or removed, one at a time, in an
// order chosen so that each intermediate folder loads:
//
//	create:   remove leftovers; ca-key.pem; ca.pem
//	          (a key without ca.pem is no CA: a new one is created)
//	prepare:  ca-next-key.pem; ca-next.pem
//	          (a next key without ca-next.pem is ignored, then overwritten)
//	activate: ca-previous.pem := ca.pem     (a previous equal to the active
//	                                         CA is ignored)
//	          ca.pem := ca-next.pem         (ca-key.pem no longer matches;
//	                                         the key is ca-next-key.pem, as
//	                                         ca-next.pem equals ca.pem)
//	          ca-key.pem := ca-next-key.pem (ca-next.pem equals ca.pem: done)
//	          remove ca-next.pem, then ca-next-key.pem
//	retire:   remove ca-previous.pem
//
// A load that finds a step cut short says so (keyStale, nextDone, orphan),
// and the next tick finishes it before anything else. ca.pem and ca-key.pem are the active CA's
// whenever no step is under way, so tools that read them directly sign with
// the CA in force.

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// errNoCA: the folder holds no CA certificate.
var errNoCA = errors.New("no CA certificate")

// folder is a CA folder on disk. Call its methods with the folder locked.
type folder struct {
	dir string
	td  spiffeid.TrustDomain
	now func() time.Time // given to the CAs loaded, for Issue
	// crash, when set (tests), is called before each change to the folder;
	// an error stops the step there, as a crash would.
	crash func(op string) error
}

// slots is what a folder holds, parsed.
type slots struct {
	active   *CA
	next     *CA               // nil: none prepared
	previous *x509.Certificate // nil: none, or the active CA's own (mid-activation)
	keyStale bool              // an activation was cut short: ca-key.pem is not the active CA's key yet
	nextDone bool              // an activation was cut short: ca-next*.pem hold the active CA
	orphan   bool              // a step was cut short: ca-next-key.pem is there without ca-next.pem
}

func (f *folder) path(name string) string { return filepath.Join(f.dir, name) }

// load parses the folder: errNoCA when it holds no CACertFile, an error
// naming the file and the reason when any CA file is broken.
func (f *folder) load() (*slots, error) {
	cert, err := f.readCert(CACertFile)
	if err != nil {
		return nil, err
	}
	if cert == nil {
		return nil, errNoCA
	}
	nextCert, err := f.readCert(NextCACertFile)
	if err != nil {
		return nil, err
	}
	s := &slots{}
	key, err := f.readKey(CAKeyFile, CACertFile, cert)
	if err != nil {
		// Cut short after ca.pem := ca-next.pem: the key is still next's.
		if nextCert == nil || !nextCert.Equal(cert) {
			return nil, err
		}
		if key, err = f.readKey(NextCAKeyFile, NextCACertFile, cert); err != nil {
			return nil, err
		}
		s.keyStale = true
	}
	s.active = &CA{td: f.td, cert: cert, key: key, now: f.now}
	switch {
	case nextCert == nil:
		if _, err := os.Lstat(f.path(NextCAKeyFile)); err == nil {
			s.orphan = true
		}
	case nextCert.Equal(cert):
		s.nextDone = true
	default:
		nextKey, err := f.readKey(NextCAKeyFile, NextCACertFile, nextCert)
		if err != nil {
			return nil, err
		}
		s.next = &CA{td: f.td, cert: nextCert, key: nextKey, now: f.now}
	}
	prev, err := f.readCert(PreviousCACertFile)
	if err != nil {
		return nil, err
	}
	if prev != nil && !prev.Equal(cert) {
		s.previous = prev
	}
	return s, nil
}

// readCert reads the CA certificate in name; nil when there is none.
func (f *folder) readCert(name string) (*x509.Certificate, error) {
	data, err := os.ReadFile(f.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	cert, err := parseCACert(data, f.td)
	if err != nil {
		return nil, fmt.Errorf("issuer: %s: %w", f.path(name), err)
	}
	return cert, nil
}

// readKey reads the key in name, which must be cert's (read from certName).
func (f *folder) readKey(name, certName string, cert *x509.Certificate) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(f.path(name))
	if err != nil {
		return nil, fmt.Errorf("issuer: CA key: %w", err)
	}
	key, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("issuer: %s: %w", f.path(name), err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("issuer: %s: the key does not match the certificate in %s", f.path(name), f.path(certName))
	}
	return key, nil
}

func (f *folder) write(name string, data []byte, perm os.FileMode) error {
	if f.crash != nil {
		if err := f.crash("write " + name); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(f.path(name), data, perm); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	return nil
}

func (f *folder) remove(name string) error {
	if _, err := os.Lstat(f.path(name)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if f.crash != nil {
		if err := f.crash("remove " + name); err != nil {
			return err
		}
	}
	if err := os.Remove(f.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("issuer: %w", err)
	}
	if err := syncDir(f.dir); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	return nil
}

// writeCA writes ca's key to keyName, then its certificate to certName: the
// certificate's arrival is what makes the CA.
func (f *folder) writeCA(ca *CA, certName, keyName string) error {
	keyPEM, err := ca.keyPEM()
	if err != nil {
		return err
	}
	if err := f.write(keyName, keyPEM, 0o600); err != nil {
		return err
	}
	return f.write(certName, pemBlock("CERTIFICATE", ca.cert.Raw), 0o644)
}

// create makes the folder's first CA, valid ttl from t. Files of an earlier
// CA that lost its certificate go first.
func (f *folder) create(ttl time.Duration, t time.Time) error {
	ca, err := newCA(f.td, ttl, t, f.now)
	if err != nil {
		return err
	}
	for _, name := range []string{NextCACertFile, NextCAKeyFile, PreviousCACertFile} {
		if err := f.remove(name); err != nil {
			return err
		}
	}
	return f.writeCA(ca, CACertFile, CAKeyFile)
}

// prepare makes the next CA, valid ttl from t.
func (f *folder) prepare(ttl time.Duration, t time.Time) (*CA, error) {
	ca, err := newCA(f.td, ttl, t, f.now)
	if err != nil {
		return nil, err
	}
	return ca, f.writeCA(ca, NextCACertFile, NextCAKeyFile)
}

// activate makes s's next CA the active one and the active one previous.
func (f *folder) activate(s *slots) error {
	if err := f.write(PreviousCACertFile, pemBlock("CERTIFICATE", s.active.cert.Raw), 0o644); err != nil {
		return err
	}
	if err := f.write(CACertFile, pemBlock("CERTIFICATE", s.next.cert.Raw), 0o644); err != nil {
		return err
	}
	return f.finish(s.next, true)
}

// finish ends an activation of active cut short: its key into CAKeyFile
// when keyStale, then whatever is left of the next CA's files goes.
func (f *folder) finish(active *CA, keyStale bool) error {
	if keyStale {
		keyPEM, err := active.keyPEM()
		if err != nil {
			return err
		}
		if err := f.write(CAKeyFile, keyPEM, 0o600); err != nil {
			return err
		}
	}
	return f.discardNext()
}

// discardNext removes the next CA: its certificate, then its key.
func (f *folder) discardNext() error {
	if err := f.remove(NextCACertFile); err != nil {
		return err
	}
	return f.remove(NextCAKeyFile)
}
