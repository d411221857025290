package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pillionmesh/pillion/internal/testpod"
	"github.com/pillionmesh/pillion/sidecar"
)

// haproxyMode is an HAProxy pair configured as a fair sidecar pair: the
// same capture rules (`pillion init`) send the pods' traffic to it, it runs
// as UID 1337, the two proxies talk mutual TLS with the same kind of SPIFFE
// certificates pillion uses (issued by `pillion identity issue`), HTTP goes
// between them as HTTP/2 with connection reuse and keep-alive to the app,
// and TCP as one TLS connection per stream: the same hops, the same work.
// HAProxy cannot read a connection's original destination and route on it
// the way a transparent sidecar does, so it is configured for each
// workload's one destination and restarted between workloads.
type haproxyMode struct {
	maxConn int
	bundle  string
	running []*testpod.Process
	current string // the workload the running pair is configured for
}

func (m *haproxyMode) setup(e *env) error {
	bundle, err := issueSVIDs(e, e.client, e.server)
	if err != nil {
		return err
	}
	m.bundle = bundle
	limit, err := fdLimit()
	if err != nil {
		return err
	}
	m.maxConn = (limit - 100) / 2
	for _, p := range []*testpod.Pod{e.client, e.server} {
		// HAProxy wants the certificate and its key in one file.
		dir := filepath.Join(e.dir, p.Name)
		cert, err1 := os.ReadFile(filepath.Join(dir, "svid.pem"))
		key, err2 := os.ReadFile(filepath.Join(dir, "svid-key.pem"))
		if err1 != nil || err2 != nil {
			return fmt.Errorf("haproxy: SVID of %s: %v %v", p.Name, err1, err2)
		}
		if err := writeFor1337(filepath.Join(dir, "haproxy.pem"), append(cert, key...)); err != nil {
			return err
		}
		if err := capture(e, p); err != nil {
			return err
		}
	}
	return nil
}

func (m *haproxyMode) proxiesFor(e *env, w workload) ([]proxy, error) {
	if m.current != w.name {
		for _, p := range m.running {
			p.Kill()
		}
		m.running = nil
		for _, side := range []struct {
			pod  *testpod.Pod
			conf string
			port uint16
		}{
			{e.client, m.clientConfig(e, w), sidecar.DefaultOutboundPort},
			{e.server, m.serverConfig(e, w), sidecar.DefaultInboundPort},
		} {
			path := filepath.Join(e.dir, side.pod.Name, "haproxy.cfg")
			if err := writeFor1337(path, []byte(side.conf)); err != nil {
				return nil, err
			}
			p := side.pod.Start(e.t, testpod.ProxyUser, e.tools.HAProxy, "-db", "-f", path)
			m.running = append(m.running, p)
			if err := waitListening(side.pod, side.port, p); err != nil {
				return nil, fmt.Errorf("haproxy in %s: %w", side.pod.Name, err)
			}
		}
		m.current = w.name
	}
	return []proxy{{side: "client", pid: m.running[0].PID()}, {side: "server", pid: m.running[1].PID()}}, nil
}

// haproxyGlobal sets HAProxy's connection limit above the idle
// connections the harness holds (as pillion's --max-connections is), but
// within the open-file limit, which HAProxy checks at start.
const haproxyGlobal = `global
    maxconn %d
defaults
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout http-keep-alive 5m
`

// clientConfig is the client pod's proxy: what the capture sends to 15001
// goes to the server pod in mutual TLS, HTTP as HTTP/2 on reused
// connections.
func (m *haproxyMode) clientConfig(e *env, w workload) string {
	mode, alpn, bindProto := "http", " alpn h2", ""
	switch w.proto {
	case protoTCP:
		mode, alpn = "tcp", ""
	case protoH2C:
		bindProto = " proto h2"
	}
	var b strings.Builder
	fmt.Fprintf(&b, haproxyGlobal, m.maxConn)
	fmt.Fprintf(&b, `frontend outbound
    mode %[1]s
    bind 0.0.0.0:%[2]d%[3]s
    bind [::]:%[2]d v6only%[3]s
    default_backend peer
backend peer
    mode %[1]s
    http-reuse always
    server peer %[4]s ssl crt %[5]s ca-file %[6]s verify required%[7]s
`, mode, sidecar.DefaultOutboundPort, bindProto, net.JoinHostPort(e.server.IPv4.String(), fmt.Sprint(w.port)),
		filepath.Join(e.dir, e.client.Name, "haproxy.pem"), m.bundle, alpn)
	return b.String()
}

// serverConfig is the server pod's proxy: mutual TLS from the peer on
// 15006, then the app on 127.0.0.1 in its own protocol.
func (m *haproxyMode) serverConfig(e *env, w workload) string {
	mode, alpn, appProto := "http", " alpn h2,http/1.1", ""
	switch w.proto {
	case protoTCP:
		mode, alpn = "tcp", ""
	case protoH2C:
		appProto = " proto h2"
	}
	var b strings.Builder
	fmt.Fprintf(&b, haproxyGlobal, m.maxConn)
	fmt.Fprintf(&b, `frontend inbound
    mode %[1]s
    bind 0.0.0.0:%[2]d ssl crt %[3]s ca-file %[4]s verify required%[5]s
    bind [::]:%[2]d v6only ssl crt %[3]s ca-file %[4]s verify required%[5]s
    default_backend app
backend app
    mode %[1]s
    http-reuse always
    server app 127.0.0.1:%[6]d%[7]s
`, mode, sidecar.DefaultInboundPort, filepath.Join(e.dir, e.server.Name, "haproxy.pem"), m.bundle, alpn, w.port, appProto)
	return b.String()
}

// capture installs pillion's capture rules in pod, as for the sidecar.
func capture(e *env, p *testpod.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.Exec(ctx, e.tools.Pillion, "init")
	return err
}

// waitListening waits until something in pod accepts on 127.0.0.1:port
// (loopback is never captured), or proc exits.
func waitListening(pod *testpod.Pod, port uint16, proc *testpod.Process) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pod.Dial(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-proc.Done():
			return fmt.Errorf("exited: %v\n%s", proc.Wait(), proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing on port %d after 10s:\n%s", port, proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeFor1337(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return os.Chown(path, int(testpod.ProxyUser.UID), int(testpod.ProxyUser.GID))
}
