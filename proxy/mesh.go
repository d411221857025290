package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/relay"
	"github.com/pillionmesh/pillion/proxy/sniff"
)

// Identity is the sidecar's identity source (mtls.WorkloadSource or
// mtls.FileSource).
type Identity interface {
	mtls.Source
	// Ready returns nil when there is a valid SVID to present, else why
	// not.
	Ready() error
}

// handshakeTimeout bounds an mTLS handshake between sidecars, and reading
// a ClientHello.
const handshakeTimeout = 10 * time.Second

// handshakeQueueTimeout bounds the wait for a handshake slot to a peer. A
// handshake costs about a millisecond of CPU on each side, so a burst of
// 10,000 new connections clears in about 12 s on two cores (bench/README.md,
// idle-conns); a dial timeout of seconds would fail a third of them.
const handshakeQueueTimeout = 30 * time.Second

// meshTLS is the mTLS side of the proxy: the identity and the TLS
// configurations built from it once.
type meshTLS struct {
	id     Identity
	server *tls.Config
	client map[string]*tls.Config // by ALPN protocol, any peer of our trust domain
	// expected holds the client configs that require one identity, by
	// "identity alpn". It grows with the identities discovery announced
	// to this sidecar: the workloads its application talks to.
	expected sync.Map
}

func newMeshTLS(id Identity) *meshTLS {
	authz := mtls.AuthorizeSameTrustDomain(id)
	m := &meshTLS{id: id, server: mtls.ServerConfig(id, authz), client: map[string]*tls.Config{}}
	for _, p := range mtls.Protos() {
		m.client[p] = mtls.ClientConfig(id, authz, p)
	}
	return m
}

// ErrNoIdentity is in the error that refuses what needs mTLS (a config's
// mesh networks or STRICT mode, Config.Discovery) from a proxy without an
// Identity.
var ErrNoIdentity = errors.New("needs an identity")

// checkMesh refuses a mesh section the proxy cannot honour.
func (s *Server) checkMesh(m configfile.Mesh) error {
	if s.mesh != nil {
		return nil
	}
	switch {
	case len(m.Networks) > 0:
		return fmt.Errorf("mesh.networks: traffic to the mesh is mTLS and %w", ErrNoIdentity)
	case m.Mode == configfile.Strict:
		return fmt.Errorf("mesh.mode: STRICT %w", ErrNoIdentity)
	}
	return nil
}

// clientFor returns the client config of connections carrying alpn to a
// peer that must present id ("" for any of our trust domain).
func (m *meshTLS) clientFor(id, alpn string) (*tls.Config, error) {
	if id == "" {
		return m.client[alpn], nil
	}
	key := id + " " + alpn
	if c, ok := m.expected.Load(key); ok {
		return c.(*tls.Config), nil
	}
	want, err := spiffeid.FromString(id)
	if err != nil {
		return nil, fmt.Errorf("expected identity %q: %w", id, err)
	}
	c, _ := m.expected.LoadOrStore(key, mtls.ClientConfig(m.id, mtls.AuthorizeExpected(want), alpn))
	return c.(*tls.Config), nil
}

// admit decides what becomes of an inbound connection when mTLS is on: one
// from a peer sidecar is served here, over mTLS, and admit returns false;
// any other is refused in STRICT mode (admit returns false) or let through
// in PERMISSIVE mode (true: the caller forwards it as it is).
func (s *Server) admit(cn *conn) bool {
	st := &s.stats.Dir[Inbound]
	if cn.det.Protocol == sniff.TLS {
		mesh, err := s.readHello(cn)
		if err != nil {
			if ce := s.log.Check(zap.DebugLevel, "connection ended during the ClientHello"); ce != nil {
				ce.Write(cn.fields(0, zap.Error(err))...)
			}
			relay.Reset(cn.c)
			return false
		}
		if mesh {
			s.serveMesh(cn)
			return false
		}
	}
	if s.config.Load().file.Mesh.Mode == configfile.Strict {
		st.PlaintextRefused.Add(1)
		s.log.Warn("refusing a connection that is not mTLS from a peer sidecar (mesh.mode STRICT)",
			cn.fields(0, zap.Stringer("protocol", cn.det.Protocol))...)
		relay.Reset(cn.c)
		return false
	}
	st.Plaintext.Add(1)
	return true
}

// readHello reads the whole ClientHello of cn (detection read only its
// start) into cn.det.Peeked, and reports whether it is a peer sidecar's.
func (s *Server) readHello(cn *conn) (bool, error) {
	_ = cn.c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	defer cn.c.SetReadDeadline(time.Time{})
	mesh, read, err := mtls.ReadHello(io.MultiReader(bytes.NewReader(cn.det.Peeked), cn.c))
	cn.det.Peeked = read
	return mesh, err
}

// serveMesh terminates the mTLS connection of a peer sidecar and serves
// what it carries: HTTP to the inbound chain, or one opaque stream to the
// application if the inbound chain lets the peer connect.
func (s *Server) serveMesh(cn *conn) {
	st := &s.stats.Dir[Inbound]
	tc := tls.Server(&prefixConn{TCPConn: cn.c, prefix: cn.det.Peeked}, s.mesh.server)
	cn.det.Peeked = nil // the handshake reads them
	ctx, cancel := context.WithTimeout(s.life.hardStop, handshakeTimeout)
	release, err := s.handshakes.acquire(ctx, s.log)
	if err == nil {
		err = handshake(ctx, tc)
		release()
	}
	cancel()
	if err != nil {
		f := mtls.Classify(err)
		st.TLSFailures[f].Add(1)
		s.log.Warn("mTLS handshake failed", cn.fields(0, zap.Stringer("reason", f), zap.Error(err))...)
		relay.Reset(cn.c)
		return
	}
	st.MTLS.Add(1)
	state := tc.ConnectionState()
	id, _ := mtls.PeerID(state) // verified in the handshake
	cn.peer, cn.alpn = id.String(), state.NegotiatedProtocol
	if cn.alpn != mtls.ProtoTCP {
		s.handleHTTP(cn, tc)
		return
	}
	if err := s.config.Load().chain(Inbound).AuthorizeConn(cn.peer); err != nil {
		st.Denied.Add(1)
		s.log.Info("connection denied", cn.fields(0, zap.Error(err))...)
		_ = tc.Close()
		return
	}
	s.relayOpaque(cn, tc)
}

// prefixConn reads prefix (what detection peeked) before what is left of
// the TCP connection.
type prefixConn struct {
	*net.TCPConn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // the buffer goes, not only its bytes
		}
		return n, nil
	}
	return c.TCPConn.Read(p)
}
