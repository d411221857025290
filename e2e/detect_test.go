package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// TestDetection runs real clients and servers through both sidecars and
// checks what each sidecar detected. Every protocol is still forwarded as
// TCP; detection must not lose or delay a byte beyond the sniff time-out.
func TestDetection(t *testing.T) {
	m := newMesh(t)
	a, b := m.a.Pod, m.b.Pod
	serveHTTP(t, b, ":8082")
	serveTLS(t, b, ":8443")

	// detected checks both sidecars' lines for dst.
	detected := func(t *testing.T, dst, protocol, how string) {
		t.Helper()
		for _, sc := range []struct {
			sc  *meshtest.Sidecar
			dir string
		}{{m.a, "outbound"}, {m.b, "inbound"}} {
			l, ok := sc.sc.WaitConnection(sc.dir, dst, 5*time.Second)
			if !ok {
				t.Errorf("%s's %s sidecar logged no connection to %s", sc.sc.Pod.Name, sc.dir, dst)
				continue
			}
			if l.Protocol != protocol || l.Detection != how {
				t.Errorf("%s's %s sidecar: protocol %q by %q, want %q by %q", sc.sc.Pod.Name, sc.dir, l.Protocol, l.Detection, protocol, how)
			}
		}
	}

	t.Run("server-first protocol works after the sniff time-out", func(t *testing.T) {
		dst := hostPort(b.IPv4, 7000)
		line, err := greeting(a, dst)
		if err != nil || line != "127.0.0.6\n" {
			t.Fatalf("greeting = %q, %v", line, err)
		}
		detected(t, dst, "opaque", "time-out")
	})

	t.Run("server-first protocol on an opaque port skips detection", func(t *testing.T) {
		dst := hostPort(b.IPv4, 3306)
		line, err := greeting(a, dst)
		if err != nil || line != "127.0.0.6\n" {
			t.Fatalf("greeting = %q, %v", line, err)
		}
		detected(t, dst, "opaque", "opaque port")
	})

	t.Run("HTTP/1.1 with net/http", func(t *testing.T) {
		dst := hostPort(b.IPv4, 8082)
		client := &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return a.Dial(ctx, "tcp", addr) },
		}, Timeout: 10 * time.Second}
		resp, err := client.Get("http://" + dst + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		client.CloseIdleConnections()
		if resp.StatusCode != 200 || string(body) != "GET /hello from 127.0.0.6" {
			t.Errorf("response %d %q", resp.StatusCode, body)
		}
		detected(t, dst, "http/1", "first bytes")
	})

	t.Run("TLS with crypto/tls", func(t *testing.T) {
		dst := hostPort(b.IPv4, 8443)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		raw, err := a.Dial(ctx, "tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "b"}) // the test's own self-signed server
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != "tls ok\n" {
			t.Fatalf("over TLS: %q, %v", line, err)
		}
		detected(t, dst, "tls", "first bytes")
	})
}

// greeting connects from pod and reads one line without sending anything.
func greeting(pod *testpod.Pod, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

// serveHTTP answers every request with "<method> <path> from <peer ip>".
func serveHTTP(t *testing.T, pod *testpod.Pod, addr string) {
	t.Helper()
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, r.Method+" "+r.URL.Path+" from "+netip.MustParseAddr(host).Unmap().String())
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// serveTLS writes "tls ok\n" over TLS with a fresh self-signed certificate.
func serveTLS(t *testing.T, pod *testpod.Pod, addr string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "b"},
		DNSNames: []string{"b"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tl := tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	meshtest.Serve(t, tl, func(c net.Conn) { _, _ = io.WriteString(c, "tls ok\n") })
}
