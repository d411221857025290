package mtls

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filewatch"
)

// Files names the PEM files of a FileSource.
type Files struct {
	// Cert is the X.509-SVID: the leaf certificate first, then any
	// intermediates.
	Cert string
	// Key is the SVID's private key, PKCS#8 ("PRIVATE KEY").
	Key string
	// Bundle holds the CA certificates of the SVID's trust domain.
	Bundle string
}

// DefaultFilePoll is how often a FileSource looks for changed files.
const DefaultFilePoll = time.Second

// FileSource is a Source read from PEM files (written by cert-manager's
// csi-driver-spiffe, spiffe-helper or `pillion identity issue`), read
// again when they change, as package filewatch does: a change is taken
// once two reads agree, and only when the three files make a consistent
// set — the key matches the certificate, which verifies against the
// bundle — so a writer replacing them one by one never leaves the source
// with half an identity: until the set is whole again, the previous one
// stays. Files that cannot be read, or do not load, are logged once.
type FileSource struct {
	files  Files
	log    *zap.Logger
	watch  *filewatch.Watcher
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads files and watches them, checking every poll (zero
// means DefaultFilePoll). An error names the file at fault and why.
func NewFileSource(files Files, poll time.Duration, log *zap.Logger) (*FileSource, error) {
	if poll <= 0 {
		poll = DefaultFilePoll
	}
	raw, err := files.read()
	if err != nil {
		return nil, err
	}
	svid, bundle, err := files.parse(raw)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &FileSource{files: files, log: log, cancel: cancel, done: make(chan struct{}),
		svid: svid, bundle: bundle}
	s.watch = filewatch.New(filewatch.Options{
		Paths:    []string{files.Cert, files.Key, files.Bundle},
		Interval: poll,
		Current:  raw[:],
		Apply:    s.apply,
		Refused:  s.refused,
		Log:      log,
	})
	s.logLoaded()
	go func() {
		defer close(s.done)
		s.watch.Run(ctx)
	}()
	return s, nil
}

func (f Files) read() ([3][]byte, error) {
	var raw [3][]byte
	for i, name := range []string{f.Cert, f.Key, f.Bundle} {
		b, err := os.ReadFile(name)
		if err != nil {
			return raw, fmt.Errorf("mtls: %w", err)
		}
		raw[i] = b
	}
	return raw, nil
}

// parse checks that raw (cert, key, bundle) is one consistent identity.
func (f Files) parse(raw [3][]byte) (*x509svid.SVID, *x509bundle.Bundle, error) {
	svid, err := x509svid.Parse(raw[0], raw[1])
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: %s with %s: %w", f.Cert, f.Key, err)
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), raw[2])
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: %s: %w", f.Bundle, err)
	}
	if len(bundle.X509Authorities()) == 0 {
		return nil, nil, fmt.Errorf("mtls: %s: no CA certificate in it", f.Bundle)
	}
	// Verify at a time the SVID is valid, so that one expired (or not yet
	// valid) still loads, and Ready says why it is not ready, instead of
	// failing here as "not signed".
	leaf := svid.Certificates[0]
	at := time.Now()
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(at)); err != nil {
		return nil, nil, fmt.Errorf("mtls: %s is not signed by a CA of %s: %w", f.Cert, f.Bundle, err)
	}
	return svid, bundle, nil
}

// apply takes the files' new contents (cert, key, bundle) if they are one
// consistent identity.
func (s *FileSource) apply(contents [][]byte) error {
	svid, bundle, err := s.files.parse([3][]byte(contents))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.svid, s.bundle = svid, bundle
	s.mu.Unlock()
	s.logLoaded()
	return nil
}

// refused logs why changed files were not taken.
func (s *FileSource) refused(err error) {
	if errors.Is(err, filewatch.ErrUnreadable) {
		s.log.Warn("identity: reading the SVID files; keeping the current SVID", zap.Error(err))
		return
	}
	s.log.Warn("identity: the SVID files changed but do not load; keeping the current SVID", zap.Error(err))
}

// Reload reads the files now and takes them if they load, changed or not
// (the proxy calls it on SIGHUP); otherwise it logs why and the current
// SVID stays.
func (s *FileSource) Reload() { s.watch.Force() }

func (s *FileSource) logLoaded() {
	s.mu.RLock()
	leaf, id := s.svid.Certificates[0], s.svid.ID
	s.mu.RUnlock()
	s.log.Info("identity: SVID from files", zap.String("spiffe_id", id.String()),
		zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("expires", leaf.NotAfter),
		zap.String("cert", s.files.Cert))
}

// GetX509SVID returns the SVID last loaded.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle when td is the SVID's
// trust domain.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if td != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("no X.509 bundle for trust domain %q in %s", td, s.files.Bundle)
	}
	return s.bundle, nil
}

// Ready returns nil while the SVID is within its validity, else why not.
func (s *FileSource) Ready() error {
	s.mu.RLock()
	leaf := s.svid.Certificates[0]
	s.mu.RUnlock()
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("%s: the SVID expired at %s", s.files.Cert, leaf.NotAfter.Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("%s: the SVID is not valid before %s", s.files.Cert, leaf.NotBefore.Format(time.RFC3339))
	}
	return nil
}

// Close stops watching the files.
func (s *FileSource) Close() error {
	s.cancel()
	<-s.done
	return nil
}
