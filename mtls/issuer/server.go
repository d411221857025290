package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DefaultSVIDTTL is the lifetime of SVIDs when Config.SVIDTTL is zero.
const DefaultSVIDTTL = time.Hour

// MaxSocketPath is the longest unix socket path, in bytes, that Linux
// accepts (sun_path is 108 bytes with the terminating NUL).
const MaxSocketPath = 107

// gracePeriod is how long Close lets open calls end before it cuts them.
const gracePeriod = 5 * time.Second

// Socket is one unix socket the Workload API is served on.
type Socket struct {
	// Path of the socket file. Its folder is created if needed.
	Path string
	// ID is the SPIFFE ID every caller of this socket gets. The zero ID
	// means callers are told apart by their UID, read from the kernel, and
	// get the ID Config.UIDs maps it to.
	ID spiffeid.ID
}

// Config says where to serve the Workload API and who gets which ID.
type Config struct {
	// Sockets to serve on; at least one.
	Sockets []Socket
	// UIDs maps a caller's UID to its ID, for sockets without an ID. A
	// caller whose UID is not here is refused (PermissionDenied).
	UIDs map[uint32]spiffeid.ID
	// SVIDTTL is the lifetime of each SVID; each caller gets a new one when
	// half of it has passed. Zero means DefaultSVIDTTL.
	SVIDTTL time.Duration
}

// Server serves the SPIFFE Workload API (X.509 only) on unix sockets. Get
// one from Listen; it owns its sockets. It is safe for concurrent use.
type Server struct {
	log       *zap.Logger
	uids      map[uint32]spiffeid.ID
	done      chan struct{} // closed by Close: streams end
	sockets   []*served
	closeOnce sync.Once
}

type served struct {
	Socket
	lis  *net.UnixListener
	grpc *grpc.Server
}

// Listen validates cfg against the trust domain of keys' CA and listens on
// each socket: a stale socket file (one nobody accepts on) is removed first,
// the socket is made 0666 so callers of any UID can connect (access is
// decided per call, by socket or UID), and a path another process is
// serving on, or a file that is not a socket, is an error. Nothing is served
// until Serve. The caller must call Serve or Close, which remove the socket
// files. Callers get SVIDs signed by keys' active CA, and open streams a new
// response each time keys' State changes; keeping an Authority on schedule
// (Authority.Run) is the caller's job.
func Listen(keys KeySource, cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.validate(keys.Current().Active.TrustDomain()); err != nil {
		return nil, err
	}
	ttl := cfg.SVIDTTL
	if ttl == 0 {
		ttl = DefaultSVIDTTL
	}
	uids := maps.Clone(cfg.UIDs)
	s := &Server{log: log, uids: uids, done: make(chan struct{})}
	for _, sock := range cfg.Sockets {
		lis, err := listenUnix(sock.Path)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("issuer: socket %s: %w", sock.Path, err)
		}
		api := &workloadAPI{keys: keys, ttl: ttl, id: sock.ID, uids: uids, done: s.done,
			log: log.With(zap.String("socket", sock.Path))}
		g := grpc.NewServer(
			grpc.Creds(peerCredentials{required: sock.ID.IsZero()}),
			grpc.UnaryInterceptor(requireHeaderUnary),
			grpc.StreamInterceptor(requireHeaderStream),
		)
		workload.RegisterSpiffeWorkloadAPIServer(g, api)
		s.sockets = append(s.sockets, &served{Socket: sock, lis: lis, grpc: g})
	}
	return s, nil
}

func (c *Config) validate(td spiffeid.TrustDomain) error {
	if len(c.Sockets) == 0 {
		return errors.New("issuer: no socket to serve on")
	}
	if c.SVIDTTL < 0 {
		return fmt.Errorf("issuer: SVID lifetime %v: must not be negative", c.SVIDTTL)
	}
	seen := make(map[string]bool)
	byUID := false
	for _, s := range c.Sockets {
		switch p := filepath.Clean(s.Path); {
		case s.Path == "":
			return errors.New("issuer: a socket has no path")
		case len(s.Path) > MaxSocketPath:
			return fmt.Errorf("issuer: socket %s: longer than %d bytes", s.Path, MaxSocketPath)
		case seen[p]:
			return fmt.Errorf("issuer: socket %s: given twice", s.Path)
		default:
			seen[p] = true
		}
		if s.ID.IsZero() {
			byUID = true
		} else if err := checkID(s.ID, td); err != nil {
			return fmt.Errorf("issuer: socket %s: %w", s.Path, err)
		}
	}
	for _, uid := range slices.Sorted(maps.Keys(c.UIDs)) {
		if err := checkID(c.UIDs[uid], td); err != nil {
			return fmt.Errorf("issuer: UID %d: %w", uid, err)
		}
	}
	if byUID && len(c.UIDs) == 0 {
		return errors.New("issuer: a socket without an ID tells callers apart by UID, but no UID is mapped to an ID")
	}
	return nil
}

// checkID: id is a workload ID in td.
func checkID(id spiffeid.ID, td spiffeid.TrustDomain) error {
	if !id.MemberOf(td) {
		return fmt.Errorf("%s is not in trust domain %s", id, td)
	}
	if id.Path() == "" {
		return fmt.Errorf("%s names the trust domain, not a workload (no path)", id)
	}
	return nil
}

// listenUnix listens on path after removing a stale socket file there.
func listenUnix(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Closing the listener removes the file (net.ListenUnix sets
	// SetUnlinkOnClose).
	if err := os.Chmod(path, 0o666); err != nil {
		_ = lis.Close()
		return nil, err
	}
	return lis, nil
}

// removeStale removes path if it is a socket nobody accepts on, and refuses
// anything else that is there.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return errors.New("the path exists and is not a socket; not replacing it")
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return errors.New("another process is serving on it")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check for a stale socket: %w", err)
	}
	return os.Remove(path)
}

// Serve serves every socket until ctx ends or one of them fails, then stops
// as Close does. It returns nil when ctx ended. Call it at most once.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.sockets))
	for _, sock := range s.sockets {
		s.log.Info("serving the Workload API", append([]zap.Field{zap.String("socket", sock.Path)}, s.mapping(sock)...)...)
		go func() {
			if err := sock.grpc.Serve(sock.lis); err != nil {
				errc <- fmt.Errorf("issuer: socket %s: %w", sock.Path, err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	_ = s.Close()
	return err
}

func (s *Server) mapping(sock *served) []zap.Field {
	if !sock.ID.IsZero() {
		return []zap.Field{zap.Stringer("spiffe_id", sock.ID)}
	}
	m := make([]string, 0, len(s.uids))
	for _, uid := range slices.Sorted(maps.Keys(s.uids)) {
		m = append(m, strconv.FormatUint(uint64(uid), 10)+"="+s.uids[uid].String())
	}
	return []zap.Field{zap.Strings("uids", m)}
}

// Close stops serving: open streams end with Unavailable, calls get up to a
// few seconds to finish, and the socket files are removed. It is safe to
// call more than once and returns nil.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		var wg sync.WaitGroup
		for _, sock := range s.sockets {
			wg.Go(func() {
				stopped := make(chan struct{})
				go func() { sock.grpc.GracefulStop(); close(stopped) }()
				t := time.NewTimer(gracePeriod)
				defer t.Stop()
				select {
				case <-stopped:
				case <-t.C:
					sock.grpc.Stop()
				}
				_ = sock.lis.Close() // when Serve never ran; removes the file
				s.log.Info("stopped serving the Workload API", zap.String("socket", sock.Path))
			})
		}
		wg.Wait()
	})
	return nil
}
