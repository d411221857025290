package issuer

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// sockDir is a short temporary folder: unix socket paths are limited to
// 107 bytes and t.TempDir() names grow with the test's name.
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pillion-issuer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

type testServer struct {
	ca   *CA
	logs *observer.ObservedLogs
	stop func() error // cancels Serve and returns what it returned
}

// serve listens with cfg on a new CA and serves until the test ends.
func serve(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ca, _, err := OpenCA(t.TempDir(), testTD, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return serveKeys(t, ca, ca, cfg)
}

// serveKeys listens with cfg on keys and serves until the test ends.
func serveKeys(t *testing.T, keys KeySource, ca *CA, cfg Config) *testServer {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	srv, err := Listen(keys, cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	var served error
	done := false
	stop := func() error {
		if !done {
			cancel()
			served, done = <-errc, true
		}
		return served
	}
	t.Cleanup(func() { _ = stop() })
	return &testServer{ca: ca, logs: logs, stop: stop}
}

func addr(path string) workloadapi.ClientOption { return workloadapi.WithAddr("unix://" + path) }

func TestWorkloadAPIPerSocket(t *testing.T) {
	dir := sockDir(t)
	web, db := spiffeid.RequireFromPath(testTD, "/ns/shop/sa/web"), spiffeid.RequireFromPath(testTD, "/ns/shop/sa/db")
	webSock, dbSock := filepath.Join(dir, "web", "api.sock"), filepath.Join(dir, "db.sock")
	s := serve(t, Config{Sockets: []Socket{{Path: webSock, ID: web}, {Path: dbSock, ID: db}}})

	for path, want := range map[string]spiffeid.ID{webSock: web, dbSock: db} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o666 {
			t.Errorf("%s: mode %v, want a socket, 0666", path, fi.Mode())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(path)))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != want {
			t.Errorf("%s: got %v, want %v", path, svid.ID, want)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
			t.Errorf("%s: the SVID does not verify against the served bundle: %v", path, err)
		}
		_ = src.Close()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := workloadapi.FetchX509Bundles(ctx, addr(webSock))
	if err != nil {
		t.Fatal(err)
	}
	b, ok := set.Get(testTD)
	if !ok || !b.Equal(s.ca.Bundle()) || set.Len() != 1 {
		t.Errorf("FetchX509Bundles: %d bundles, ours present %v; want exactly the CA's", set.Len(), ok)
	}
	if n := s.logs.FilterMessage("serving the Workload API").FilterField(zap.Stringer("spiffe_id", web)).Len(); n != 1 {
		t.Errorf("%d 'serving' log lines for %s, want 1", n, webSock)
	}
	if n := s.logs.FilterMessage("issued an X.509-SVID").FilterField(zap.Stringer("spiffe_id", db)).Len(); n != 1 {
		t.Errorf("%d 'issued' log lines for %s, want 1", n, db)
	}

	if err := s.stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
	for _, path := range []string{webSock, dbSock} {
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after shutdown: %v, want it removed", path, err)
		}
	}
}

// TestWorkloadAPIRotation: a watching client gets a new SVID before the old
// one expires.
func TestWorkloadAPIRotation(t *testing.T) {
	path := filepath.Join(sockDir(t), "api.sock")
	id := spiffeid.RequireFromPath(testTD, "/a")
	serve(t, Config{Sockets: []Socket{{Path: path, ID: id}}, SVIDTTL: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(path)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	leaf := first.Certificates[0]
	if life := time.Until(leaf.NotAfter); life > 2*time.Second {
		t.Errorf("SVID lives %v more, want at most the 2s TTL", life)
	}
	for {
		select {
		case <-src.Updated():
		case <-ctx.Done():
			t.Fatal("no new SVID within 10s")
		}
		next, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if next.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			continue
		}
		if time.Now().After(leaf.NotAfter) {
			t.Errorf("the new SVID came at %v, after the old one expired at %v", time.Now(), leaf.NotAfter)
		}
		if !next.Certificates[0].NotAfter.After(leaf.NotAfter) || next.ID != id {
			t.Errorf("new SVID %v until %v; want %v, later than %v", next.ID, next.Certificates[0].NotAfter, id, leaf.NotAfter)
		}
		return
	}
}

// TestWorkloadAPIByUID: on a socket without an ID, the caller's UID, read
// from the kernel, picks its ID; an unmapped UID is refused as SPIRE does.
func TestWorkloadAPIByUID(t *testing.T) {
	dir := sockDir(t)
	me := uint32(os.Getuid())
	id := spiffeid.RequireFromPath(testTD, "/ns/test/sa/me")
	mapped, unmapped := filepath.Join(dir, "mapped.sock"), filepath.Join(dir, "unmapped.sock")
	serve(t, Config{Sockets: []Socket{{Path: mapped}}, UIDs: map[uint32]spiffeid.ID{me: id}})
	s := serve(t, Config{Sockets: []Socket{{Path: unmapped}}, UIDs: map[uint32]spiffeid.ID{me + 1: id}})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, addr(mapped))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Errorf("UID %d got %v, want %v", me, svid.ID, id)
	}

	for name, fetch := range map[string]func() error{
		"FetchX509SVID":    func() error { _, err := workloadapi.FetchX509SVID(ctx, addr(unmapped)); return err },
		"FetchX509Bundles": func() error { _, err := workloadapi.FetchX509Bundles(ctx, addr(unmapped)); return err },
	} {
		err := fetch()
		if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "no identity issued" {
			t.Errorf("%s from unmapped UID %d: %v, want PermissionDenied: no identity issued", name, me, err)
		}
	}
	refused := s.logs.FilterMessage("refused a caller: no identity for its UID").FilterField(zap.Uint32("uid", me))
	if refused.Len() != 2 {
		t.Errorf("%d log lines about refusing UID %d, want 2", refused.Len(), me)
	}
}

func rawClient(t *testing.T, path string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

// TestWorkloadAPISecurityHeader: calls without workload.spiffe.io: true are
// refused before anything else; JWT calls are answered Unimplemented.
func TestWorkloadAPISecurityHeader(t *testing.T) {
	path := filepath.Join(sockDir(t), "api.sock")
	serve(t, Config{Sockets: []Socket{{Path: path, ID: spiffeid.RequireFromPath(testTD, "/a")}}})
	c := rawClient(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svidErr := func(ctx context.Context) error {
		stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		return err
	}
	bundlesErr := func(ctx context.Context) error {
		stream, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		return err
	}
	jwtErr := func(ctx context.Context) error {
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
		return err
	}
	for _, tt := range []struct {
		name   string
		call   func(context.Context) error
		header string
		code   codes.Code
		msg    string
	}{
		{"X.509-SVID without header", svidErr, "", codes.InvalidArgument, "security header missing from request"},
		{"X.509-SVID with header false", svidErr, "false", codes.InvalidArgument, "security header missing from request"},
		{"X.509-SVID with header", svidErr, "true", codes.OK, ""},
		{"bundles without header", bundlesErr, "", codes.InvalidArgument, "security header missing from request"},
		{"JWT-SVID without header", jwtErr, "", codes.InvalidArgument, "security header missing from request"},
		{"JWT-SVID with header", jwtErr, "true", codes.Unimplemented,
			"pillion identity issues X.509-SVIDs only; JWT-SVIDs are not supported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctx
			if tt.header != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, securityHeader, tt.header)
			}
			st := status.Convert(tt.call(ctx))
			if st.Code() != tt.code || st.Message() != tt.msg {
				t.Errorf("got %v: %q, want %v: %q", st.Code(), st.Message(), tt.code, tt.msg)
			}
		})
	}
}

// TestWorkloadAPIShutdown: open streams end with Unavailable and Serve
// returns without waiting out the grace period.
func TestWorkloadAPIShutdown(t *testing.T) {
	path := filepath.Join(sockDir(t), "api.sock")
	s := serve(t, Config{Sockets: []Socket{{Path: path, ID: spiffeid.RequireFromPath(testTD, "/a")}}})
	ctx := metadata.AppendToOutgoingContext(context.Background(), securityHeader, "true")
	stream, err := rawClient(t, path).FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if took := time.Since(start); took >= gracePeriod {
		t.Errorf("shutdown took %v: open streams were not ended", took)
	}
	_, err = stream.Recv()
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "pillion identity is shutting down" {
		t.Errorf("open stream at shutdown: %v, want Unavailable: pillion identity is shutting down", err)
	}
}

func TestListenSocketFiles(t *testing.T) {
	ca := mustOpen(t, t.TempDir(), testTD, time.Now())
	id := spiffeid.RequireFromPath(testTD, "/a")
	listen := func(path string) error {
		srv, err := Listen(ca, Config{Sockets: []Socket{{Path: path, ID: id}}}, zap.NewNop())
		if err == nil {
			_ = srv.Close()
		}
		return err
	}
	dir := sockDir(t)

	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		lis.SetUnlinkOnClose(false)
		_ = lis.Close()
		if err := listen(path); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after Close: %v, want the socket removed", err)
		}
	})
	t.Run("live socket is refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		lis, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		want := "issuer: socket " + path + ": another process is serving on it"
		if err := listen(path); err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
	})
	t.Run("a file that is not a socket is left alone", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		write(t, path, []byte("keep me"))
		want := "issuer: socket " + path + ": the path exists and is not a socket; not replacing it"
		if err := listen(path); err == nil || err.Error() != want {
			t.Errorf("error %v, want %s", err, want)
		}
		if data, _ := os.ReadFile(path); string(data) != "keep me" {
			t.Errorf("the file now holds %q", data)
		}
	})
	t.Run("a failed socket closes the others", func(t *testing.T) {
		good, bad := filepath.Join(dir, "good.sock"), filepath.Join(dir, "file")
		_, err := Listen(ca, Config{Sockets: []Socket{{Path: good, ID: id}, {Path: bad, ID: id}}}, zap.NewNop())
		if err == nil {
			t.Fatal("no error")
		}
		if _, err := os.Lstat(good); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", good, err)
		}
	})
}

func TestListenConfigErrors(t *testing.T) {
	ca := mustOpen(t, t.TempDir(), testTD, time.Now())
	dir := sockDir(t)
	a := filepath.Join(dir, "a.sock")
	id := spiffeid.RequireFromPath(testTD, "/a")
	other := spiffeid.RequireFromString("spiffe://other.org/a")
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no socket", Config{}, "issuer: no socket to serve on"},
		{"empty path", Config{Sockets: []Socket{{ID: id}}}, "issuer: a socket has no path"},
		{"path too long", Config{Sockets: []Socket{{Path: "/" + strings.Repeat("x", 107), ID: id}}},
			"issuer: socket /" + strings.Repeat("x", 107) + ": longer than 107 bytes"},
		{"twice", Config{Sockets: []Socket{{Path: a, ID: id}, {Path: a + "/.", ID: id}}},
			"issuer: socket " + a + "/.: given twice"},
		{"socket ID elsewhere", Config{Sockets: []Socket{{Path: a, ID: other}}},
			"issuer: socket " + a + ": spiffe://other.org/a is not in trust domain cluster.local"},
		{"socket ID of the trust domain", Config{Sockets: []Socket{{Path: a, ID: testTD.ID()}}},
			"issuer: socket " + a + ": spiffe://cluster.local names the trust domain, not a workload (no path)"},
		{"UID ID elsewhere", Config{Sockets: []Socket{{Path: a}}, UIDs: map[uint32]spiffeid.ID{7: id, 9: other}},
			"issuer: UID 9: spiffe://other.org/a is not in trust domain cluster.local"},
		{"by UID without UIDs", Config{Sockets: []Socket{{Path: a}}},
			"issuer: a socket without an ID tells callers apart by UID, but no UID is mapped to an ID"},
		{"negative TTL", Config{Sockets: []Socket{{Path: a, ID: id}}, SVIDTTL: -time.Second},
			"issuer: SVID lifetime -1s: must not be negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Listen(ca, tt.cfg, zap.NewNop())
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v\nwant  %s", err, tt.want)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("the socket folder holds %v, want nothing", names)
			}
		})
	}
}
