package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/mtls/issuer"
)

// defaultIdentityDir keeps the CA across restarts (and reboots: not under
// /run), so the trust bundle sidecars hold stays valid.
const defaultIdentityDir = "/var/lib/pillion/identity"

const (
	defaultCATTL      = 365 * 24 * time.Hour
	defaultIssueTTL   = 24 * time.Hour
	minSVIDTTL        = 2 * time.Second
	identityIDExample = "spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE-ACCOUNT"
)

const identitySummary = `Run a small SPIFFE issuer for laptops, demos and tests: a CA kept in --dir
that serves X.509-SVIDs on the SPIFFE Workload API, the API the SPIRE agent
serves, on unix sockets. Sidecars take their identity from it with
'pillion proxy --spiffe-socket=PATH'. Production uses SPIRE or any other
Workload API or file-based SVID source instead.

The CA (ECDSA P-256, self-signed, valid --ca-ttl) is created on the first run
as ca.pem (0644) and ca-key.pem (0600) in --dir, and loaded on later runs. It
rotates, as SPIRE's does: at half of its lifetime a next CA is prepared
(ca-next.pem, ca-next-key.pem) and added to the trust bundle; at three
quarters it takes over signing, and the old one (ca-previous.pem) stays in
the bundle until it expires. Open streams get the new bundle, then an SVID of
the new CA, as each step happens, so peers trust a CA before they meet
anything it signed. --svid-ttl must be at most --ca-ttl/4 so that no SVID
outlives the CA that signed it. A folder holding a CA of another trust
domain, a key that does not match, or an expired CA with no valid successor
is an error: remove the folder to start over (every sidecar then needs the
new bundle).

Each --socket says who gets which ID. PATH=SPIFFE-ID: everyone who connects
to PATH gets that ID. PATH alone: callers are told apart by their UID, which
the kernel reports (SO_PEERCRED), and get the ID --uid maps it to; a UID that
maps to nothing is refused (PermissionDenied "no identity issued"). Socket
files are made 0666, a stale one is replaced, and they are removed on exit.

Each caller gets a fresh key and SVID, valid --svid-ttl, and a new one when
half of that has passed. Only X.509 is served: JWT calls are Unimplemented.
Calls must carry the "workload.spiffe.io: true" metadata, as go-spiffe's
client sends it. Logs are JSON lines on stderr, one per SVID issued.
SIGINT or SIGTERM: end open streams, remove the sockets, exit.

'pillion identity issue' writes one SVID to files instead: run it with
--help for its flags.

Examples:
  pillion identity --dir=/tmp/pillion-ca \
    --socket=/run/pillion/web.sock=spiffe://cluster.local/ns/shop/sa/web
  pillion identity --dir=/tmp/pillion-ca --socket=/run/pillion/node.sock \
    --uid=1337=spiffe://cluster.local/ns/shop/sa/web --uid=1338=spiffe://cluster.local/ns/shop/sa/db
  pillion proxy --spiffe-socket=unix:///run/pillion/web.sock ...`

const identityIssueSummary = `Issue one X.509-SVID with the active CA in --dir (created if the folder
holds none; a rotation step that is due is taken first) and write it to
--out, for a sidecar that reads its identity from files (pillion proxy
--svid-cert, --svid-key, --svid-bundle):

  bundle.pem    the trust domain's CA certificates (PEM: previous, active and
                next CA, those there are), 0644
  svid-key.pem  the SVID's private key (PEM "PRIVATE KEY", PKCS #8), 0600
  svid.pem      the SVID certificate (PEM), 0644

They are written in that order, each atomically (temporary file, then
rename), so a process polling the folder never reads half a file and never
sees a new certificate before its key or the bundle that verifies it. The
files belong to the user who runs this: chown them for a sidecar running
as another UID.

Example:
  pillion identity issue --dir=/tmp/pillion-ca \
    --id=spiffe://cluster.local/ns/shop/sa/web --out=/tmp/web
  pillion proxy --svid-cert=/tmp/web/svid.pem --svid-key=/tmp/web/svid-key.pem \
    --svid-bundle=/tmp/web/bundle.pem ...`

// repeatedFlag collects every value of a flag given more than once.
type repeatedFlag []string

var _ flag.Value = (*repeatedFlag)(nil)

func (r *repeatedFlag) String() string     { return strings.Join(*r, ",") }
func (r *repeatedFlag) Set(v string) error { *r = append(*r, v); return nil }

// runIdentity is `pillion identity`: it validates every flag, then opens
// the CA and serves the Workload API until ctx ends. `pillion identity
// issue` goes to runIdentityIssue.
func runIdentity(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "issue" {
		return runIdentityIssue(args[1:], stdout)
	}
	fs := newFlagSet("identity", identitySummary, stdout)
	dir := fs.String("dir", defaultIdentityDir, "folder of the CA (ca.pem, ca-key.pem); created with the CA on the first run")
	tdFlag := fs.String("trust-domain", "cluster.local", "trust domain of the CA and of every ID it issues")
	var sockets, uids repeatedFlag
	fs.Var(&sockets, "socket", "unix socket to serve the Workload API on (repeatable): PATH=SPIFFE-ID gives every caller that ID; PATH alone identifies callers by --uid")
	fs.Var(&uids, "uid", "UID=SPIFFE-ID: the ID a caller running as UID gets on a --socket without an ID (repeatable)")
	svidTTL := fs.Duration("svid-ttl", issuer.DefaultSVIDTTL, "lifetime of each SVID; a new one is sent when half of it has passed (at least 2s, at most --ca-ttl/4)")
	caTTL := fs.Duration("ca-ttl", defaultCATTL, "lifetime of each CA this run creates; the next CA is prepared at half of it and signs from three quarters")
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	fs.TextVar(&level, "log-level", level, "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	td, err := trustDomainFlag(*tdFlag)
	if err != nil {
		return err
	}
	cfg, err := identityConfig(td, sockets, uids)
	if err != nil {
		return err
	}
	if *svidTTL < minSVIDTTL {
		return badUsage(fmt.Errorf("--svid-ttl: %v: must be at least %v", *svidTTL, minSVIDTTL))
	}
	cfg.SVIDTTL = *svidTTL
	if err := checkDirFlags(*dir, *caTTL); err != nil {
		return err
	}
	if *svidTTL > *caTTL/4 {
		return badUsage(fmt.Errorf("--svid-ttl: %v: must be at most a quarter of --ca-ttl (%v): a CA signs until three quarters of its lifetime, and no SVID may outlive its CA",
			*svidTTL, *caTTL))
	}

	log := newLogger(level, stderr, "json")
	defer func() { _ = log.Sync() }()
	auth, created, err := issuer.OpenAuthority(*dir, td, *caTTL, log)
	if err != nil {
		return err
	}
	msg := "loaded the CA"
	if created {
		msg = "created a CA"
	}
	active := auth.Current().Active.Certificate()
	log.Info(msg, zap.String("version", version), zap.String("dir", *dir), zap.Stringer("trust_domain", td),
		zap.String("serial", active.SerialNumber.Text(16)), zap.Time("expires", active.NotAfter))
	srv, err := issuer.Listen(auth, cfg, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	rotated := make(chan struct{})
	go func() { auth.Run(ctx); close(rotated) }()
	err = srv.Serve(ctx)
	cancel()
	<-rotated
	return err
}

func trustDomainFlag(s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return td, badUsage(fmt.Errorf("--trust-domain %s: %w", s, err))
	}
	return td, nil
}

func checkDirFlags(dir string, caTTL time.Duration) error {
	if dir == "" {
		return badUsage(errors.New("--dir: missing: the folder of the CA"))
	}
	if caTTL <= 0 {
		return badUsage(fmt.Errorf("--ca-ttl: %v: must be positive", caTTL))
	}
	return nil
}

// identityConfig turns the --socket and --uid values into the issuer's
// config, with errors that name the flag and the value.
func identityConfig(td spiffeid.TrustDomain, sockets, uids []string) (issuer.Config, error) {
	var cfg issuer.Config
	if len(sockets) == 0 {
		return cfg, badUsage(errors.New("--socket: missing: give at least one socket to serve on"))
	}
	seen := make(map[string]bool)
	var byUID []string
	for _, v := range sockets {
		path, idStr, hasID := strings.Cut(v, "=")
		if path == "" {
			return cfg, badUsage(fmt.Errorf("--socket %s: no path", v))
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return cfg, badUsage(fmt.Errorf("--socket %s: %w", v, err))
		}
		if len(abs) > issuer.MaxSocketPath {
			return cfg, badUsage(fmt.Errorf("--socket %s: the path is %d bytes, more than the %d a unix socket allows",
				v, len(abs), issuer.MaxSocketPath))
		}
		if seen[abs] {
			return cfg, badUsage(fmt.Errorf("--socket %s: %s is given twice", v, abs))
		}
		seen[abs] = true
		sock := issuer.Socket{Path: abs}
		if hasID {
			if sock.ID, err = workloadID(td, idStr); err != nil {
				return cfg, badUsage(fmt.Errorf("--socket %s: %w", v, err))
			}
		} else {
			byUID = append(byUID, v)
		}
		cfg.Sockets = append(cfg.Sockets, sock)
	}
	for _, v := range uids {
		uidStr, idStr, ok := strings.Cut(v, "=")
		if !ok {
			return cfg, badUsage(fmt.Errorf("--uid %s: want UID=SPIFFE-ID", v))
		}
		uid, err := strconv.ParseUint(uidStr, 10, 32)
		if err != nil {
			return cfg, badUsage(fmt.Errorf("--uid %s: %q is not a number", v, uidStr))
		}
		id, err := workloadID(td, idStr)
		if err != nil {
			return cfg, badUsage(fmt.Errorf("--uid %s: %w", v, err))
		}
		if cfg.UIDs == nil {
			cfg.UIDs = make(map[uint32]spiffeid.ID)
		}
		if _, dup := cfg.UIDs[uint32(uid)]; dup {
			return cfg, badUsage(fmt.Errorf("--uid %s: UID %d is given twice", v, uid))
		}
		cfg.UIDs[uint32(uid)] = id
	}
	switch {
	case len(byUID) > 0 && len(uids) == 0:
		return cfg, badUsage(fmt.Errorf("--socket %s: no =SPIFFE-ID, so callers are told apart by UID, but no --uid is given", byUID[0]))
	case len(byUID) == 0 && len(uids) > 0:
		return cfg, badUsage(errors.New("--uid: every --socket has its own ID; add a --socket PATH without =SPIFFE-ID to serve IDs by UID"))
	}
	return cfg, nil
}

// workloadID parses s as the SPIFFE ID of a workload in td.
func workloadID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	switch {
	case err != nil:
		return id, fmt.Errorf("not a SPIFFE ID (%s): %w", identityIDExample, err)
	case !id.MemberOf(td):
		return id, fmt.Errorf("the ID is not in trust domain %s", td)
	case id.Path() == "":
		return id, fmt.Errorf("the ID names the trust domain, not a workload (%s)", identityIDExample)
	}
	return id, nil
}

// runIdentityIssue is `pillion identity issue`: one SVID written to files.
func runIdentityIssue(args []string, stdout io.Writer) error {
	err := identityIssue(args, stdout)
	if errors.As(err, new(usageError)) {
		// run names the command "identity"; say which of its two.
		return badUsage(fmt.Errorf("issue: %w", err))
	}
	return err
}

func identityIssue(args []string, stdout io.Writer) error {
	fs := newFlagSet("identity issue", identityIssueSummary, stdout)
	dir := fs.String("dir", defaultIdentityDir, "folder of the CA (ca.pem, ca-key.pem); a CA is created there if it holds none")
	tdFlag := fs.String("trust-domain", "cluster.local", "trust domain of the CA and of --id")
	idFlag := fs.String("id", "", "SPIFFE ID to issue, in --trust-domain (required), e.g. spiffe://cluster.local/ns/default/sa/default")
	ttl := fs.Duration("ttl", defaultIssueTTL, "lifetime of the SVID (cut to the CA's own expiry)")
	out := fs.String("out", "", "folder to write svid.pem, svid-key.pem and bundle.pem to, created if needed (required)")
	caTTL := fs.Duration("ca-ttl", defaultCATTL, "lifetime of each CA this run creates (the first, or the next one when its time has come)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	td, err := trustDomainFlag(*tdFlag)
	if err != nil {
		return err
	}
	if *idFlag == "" {
		return badUsage(fmt.Errorf("--id: missing: the SPIFFE ID to issue (%s)", identityIDExample))
	}
	id, err := workloadID(td, *idFlag)
	if err != nil {
		return badUsage(fmt.Errorf("--id %s: %w", *idFlag, err))
	}
	if *ttl <= 0 {
		return badUsage(fmt.Errorf("--ttl: %v: must be positive", *ttl))
	}
	if *out == "" {
		return badUsage(errors.New("--out: missing: the folder to write the SVID to"))
	}
	if err := checkDirFlags(*dir, *caTTL); err != nil {
		return err
	}

	auth, created, err := issuer.OpenAuthority(*dir, td, *caTTL, zap.NewNop())
	if err != nil {
		return err
	}
	keys := auth.Current()
	if created {
		fmt.Fprintf(stdout, "created a CA for %s in %s, expires %s\n", td, *dir, rfc3339(keys.Active.Certificate().NotAfter))
	}
	svid, err := keys.Active.Issue(id, *ttl)
	if err != nil {
		return err
	}
	files, err := issuer.WriteFiles(*out, svid, keys.X509Bundle())
	if err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(stdout, "issued %s, serial %s, expires %s\n", id, leaf.SerialNumber.Text(16), rfc3339(leaf.NotAfter))
	for _, p := range []string{files.SVID, files.Key, files.Bundle} {
		fmt.Fprintf(stdout, "  %s\n", p)
	}
	return nil
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }
