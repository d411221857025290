package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
)

// KeySource is where a Server gets the CA it signs with and the bundle it
// serves: a *CA, which never changes, or an *Authority, which rotates.
type KeySource interface {
	// Current returns the CAs in force. Its Changed channel is closed when
	// newer ones replace them.
	Current() *State
}

// State is the CAs of an Authority at one time. It is immutable: the
// caller must not modify it.
type State struct {
	// Active signs SVIDs.
	Active *CA
	// Previous is the CA Active replaced, until it expires; Next is the CA
	// that will replace Active, once prepared. Either may be nil.
	Previous, Next *x509.Certificate
	// Bundle is the trust bundle: Previous, Active and Next, those present,
	// in that order.
	Bundle []*x509.Certificate

	changed chan struct{}
}

// Changed is closed when a newer State replaces this one. It is nil, a
// channel that never fires, for a CA's State.
func (s *State) Changed() <-chan struct{} { return s.changed }

// X509Bundle returns Bundle as a go-spiffe bundle the caller may change.
func (s *State) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(s.Active.td, s.Bundle)
}

// same: s and o sign with the same CA and serve the same bundle.
func (s *State) same(o *State) bool {
	return s.Active.cert.Equal(o.Active.cert) &&
		slices.EqualFunc(s.Bundle, o.Bundle, (*x509.Certificate).Equal)
}

// Authority is the rotating CA of one trust domain, kept in a folder (see
// the package documentation for the schedule). Get one from OpenAuthority;
// Run keeps it on schedule. It is safe for concurrent use.
type Authority struct {
	f   folder
	ttl time.Duration
	log *zap.Logger

	mu     sync.Mutex // serialises ticks
	nextAt time.Time  // guarded by mu: when the next step is due
	cur    atomic.Pointer[State]
}

var _ KeySource = (*Authority)(nil)

// Timing of Run.
const (
	maxTickWait   = time.Minute // re-read the folder at least this often
	minTickWait   = 50 * time.Millisecond
	tickRetryWait = 5 * time.Second
	maxSteps      = 8 // a tick takes at most this many steps
)

// OpenAuthority opens the CA folder dir of trust domain td, creating it
// (0755) and its first CA when it holds no CA certificate, and takes every
// rotation step due now: it finishes a step a crash cut short, and a folder
// whose active CA expired while a valid next CA waits has that one
// activated. Each CA it creates lives ttl. created says whether the first
// CA was created.
//
// It fails, naming the file and the reason, when a PEM does not parse, a
// certificate is not a CA or belongs to another trust domain than td, a key
// does not match its certificate, or the active CA has expired with no
// valid next one. Concurrent opens of one dir, in this process or others,
// agree on one CA (the folder is locked; on Linux only). log gets a line per
// rotation step.
func OpenAuthority(dir string, td spiffeid.TrustDomain, ttl time.Duration, log *zap.Logger) (a *Authority, created bool, err error) {
	return openAuthority(dir, td, ttl, log, time.Now, nil)
}

func openAuthority(dir string, td spiffeid.TrustDomain, ttl time.Duration, log *zap.Logger,
	now func() time.Time, crash func(string) error) (*Authority, bool, error) {
	if td.IsZero() {
		return nil, false, errors.New("issuer: no trust domain")
	}
	if ttl <= 0 {
		return nil, false, fmt.Errorf("issuer: CA lifetime %v: must be positive", ttl)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("issuer: CA folder: %w", err)
	}
	a := &Authority{f: folder{dir: dir, td: td, now: now, crash: crash}, ttl: ttl, log: log}
	created, err := a.tick(true)
	if err != nil {
		return nil, false, err
	}
	return a, created, nil
}

// OpenCA opens the CA folder dir as OpenAuthority does, without logging,
// and returns its active CA. created says whether it was created.
func OpenCA(dir string, td spiffeid.TrustDomain, ttl time.Duration) (ca *CA, created bool, err error) {
	return openCA(dir, td, ttl, time.Now)
}

func openCA(dir string, td spiffeid.TrustDomain, ttl time.Duration, now func() time.Time) (*CA, bool, error) {
	a, created, err := openAuthority(dir, td, ttl, zap.NewNop(), now, nil)
	if err != nil {
		return nil, false, err
	}
	return a.Current().Active, created, nil
}

// TrustDomain is the trust domain of every CA of the Authority.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.f.td }

// Current returns the CAs in force.
func (a *Authority) Current() *State { return a.cur.Load() }

// Tick takes every rotation step due by the Authority's clock, with the
// folder locked and re-read: finish a step a crash cut short, retire an
// expired previous CA, activate the next CA, prepare one. When the CAs
// changed, the new State replaces the current one. On error the current
// State stays. Run calls Tick when a step is due.
func (a *Authority) Tick() error {
	_, err := a.tick(false)
	return err
}

// Run ticks when each step is due, and at least every minute (another
// process may share the folder), until ctx ends. A failed tick is logged
// and tried again a few seconds later.
func (a *Authority) Run(ctx context.Context) {
	for {
		wait := tickRetryWait
		if err := a.Tick(); err != nil {
			a.log.Error("CA rotation failed; retrying", zap.Error(err), zap.Duration("retry_in", wait))
		} else {
			a.mu.Lock()
			at := a.nextAt
			a.mu.Unlock()
			wait = min(max(at.Sub(a.f.now()), minTickWait), maxTickWait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (a *Authority) tick(create bool) (created bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	unlock, err := lockDir(a.f.dir)
	if err != nil {
		return false, fmt.Errorf("issuer: lock CA folder: %w", err)
	}
	defer unlock()
	t := a.f.now()
	s, err := a.f.load()
	if errors.Is(err, errNoCA) {
		if !create {
			return false, fmt.Errorf("issuer: %s: %w; was the folder emptied?", a.f.path(CACertFile), err)
		}
		if err := a.f.create(a.ttl, t); err != nil {
			return false, err
		}
		created = true
		s, err = a.f.load()
	}
	for range maxSteps {
		if err != nil {
			return created, err
		}
		var st step
		if st, err = s.due(t, a.f.path(CACertFile)); err != nil {
			return created, err
		}
		if st == stepNone {
			a.nextAt = s.nextAt()
			a.publish(s)
			return created, nil
		}
		if err = a.take(st, s, t); err != nil {
			return created, err
		}
		s, err = a.f.load()
	}
	return created, errors.New("issuer: CA rotation does not settle")
}

func (a *Authority) publish(s *slots) {
	st := &State{Active: s.active, Previous: s.previous, changed: make(chan struct{})}
	if s.next != nil {
		st.Next = s.next.cert
	}
	for _, c := range []*x509.Certificate{st.Previous, st.Active.cert, st.Next} {
		if c != nil {
			st.Bundle = append(st.Bundle, c)
		}
	}
	old := a.cur.Load()
	if old != nil && old.same(st) {
		return
	}
	a.cur.Store(st)
	if old != nil {
		close(old.changed)
	}
}

type step int

const (
	stepNone step = iota
	stepFinish
	stepRetire
	stepDiscard
	stepActivate
	stepPrepare
)

// due returns the step s needs at t, or why it cannot go on (certPath names
// the active CA's file).
func (s *slots) due(t time.Time, certPath string) (step, error) {
	active := s.active.cert
	switch {
	case s.keyStale || s.nextDone || s.orphan:
		return stepFinish, nil
	case t.Before(active.NotBefore):
		return stepNone, fmt.Errorf("issuer: %s: the CA is not valid before %s; is the clock right?",
			certPath, active.NotBefore.UTC().Format(time.RFC3339))
	case s.previous != nil && !t.Before(s.previous.NotAfter):
		return stepRetire, nil
	case s.next != nil && !t.Before(s.next.cert.NotAfter):
		return stepDiscard, nil
	case s.next != nil && !t.Before(s.activateAt()):
		return stepActivate, nil
	case !t.Before(active.NotAfter):
		return stepNone, fmt.Errorf("issuer: %s: the CA expired at %s; remove its folder to create a new one",
			certPath, active.NotAfter.UTC().Format(time.RFC3339))
	case s.next == nil && !t.Before(prepareAt(active)):
		return stepPrepare, nil
	}
	return stepNone, nil
}

func (a *Authority) take(st step, s *slots, t time.Time) error {
	switch st {
	case stepFinish:
		if err := a.f.finish(s.active, s.keyStale); err != nil {
			return err
		}
		if s.keyStale || s.nextDone {
			a.log.Info("CA activated (finished an activation cut short)", caFields(s.active.cert)...)
		}
	case stepRetire:
		if err := a.f.remove(PreviousCACertFile); err != nil {
			return err
		}
		a.log.Info("CA retired", caFields(s.previous)...)
	case stepDiscard:
		if err := a.f.discardNext(); err != nil {
			return err
		}
		a.log.Warn("CA discarded: the next CA expired before its turn", caFields(s.next.cert)...)
	case stepActivate:
		if err := a.f.activate(s); err != nil {
			return err
		}
		a.log.Info("CA activated", caFields(s.next.cert)...)
	case stepPrepare:
		next, err := a.f.prepare(a.ttl, t)
		if err != nil {
			return err
		}
		at := (&slots{active: s.active, next: next, previous: s.previous}).activateAt()
		a.log.Info("CA prepared", append(caFields(next.cert), zap.Time("activates", at))...)
	}
	return nil
}

func caFields(c *x509.Certificate) []zap.Field {
	return []zap.Field{zap.String("serial", c.SerialNumber.Text(16)), zap.Time("expires", c.NotAfter)}
}

// lifetime is when c came into use and how long it was made to live: its
// NotBefore is backdated for clock skew.
func lifetime(c *x509.Certificate) (start time.Time, l time.Duration) {
	start = c.NotBefore.Add(backdate)
	if !start.Before(c.NotAfter) {
		start = c.NotBefore
	}
	return start, c.NotAfter.Sub(start)
}

// prepareAt is when the next CA is prepared: half of active's lifetime.
func prepareAt(active *x509.Certificate) time.Time {
	start, l := lifetime(active)
	return start.Add(l / 2)
}

// activateAt is when s's next CA takes over: at three quarters of the
// active CA's lifetime L, and not before the next CA has been in the bundle
// for L/4 (it was prepared late, after a downtime) nor before the previous
// CA expired (one previous slot), unless the active CA expires first.
func (s *slots) activateAt() time.Time {
	start, l := lifetime(s.active.cert)
	at := start.Add(3 * l / 4)
	if nextStart, _ := lifetime(s.next.cert); nextStart.Add(l / 4).After(at) {
		at = nextStart.Add(l / 4)
	}
	if s.previous != nil && s.previous.NotAfter.After(at) {
		at = s.previous.NotAfter
	}
	if s.active.cert.NotAfter.Before(at) {
		at = s.active.cert.NotAfter
	}
	return at
}

// nextAt is when s next needs a step.
func (s *slots) nextAt() time.Time {
	at := []time.Time{s.active.cert.NotAfter}
	if s.previous != nil {
		at = append(at, s.previous.NotAfter)
	}
	if s.next != nil {
		at = append(at, s.next.cert.NotAfter, s.activateAt())
	} else {
		at = append(at, prepareAt(s.active.cert))
	}
	return slices.MinFunc(at, time.Time.Compare)
}
