package proxy

// Benchmarks of the data path, in-process, on this host's addresses: the
// kernel's SO_ORIGINAL_DST is replaced by a fixed destination (as in the
// unit tests), so neither root nor iptables is needed. The application and
// the clients are minimal HTTP/1.1 and TCP peers that allocate next to
// nothing, so that B/op and allocs/op are, to within a few, pillion's
// (both sidecars' in the mesh cases).
//
//	go test -run '^$' -bench . -benchmem ./proxy/
//
// Topologies:
//
//	outbound: client → sidecar A (outbound) → application, plaintext; HTTP
//	          over pooled HTTP/1.1.
//	mesh:     client → sidecar A (outbound) → mTLS → sidecar B (inbound) →
//	          application; HTTP over pooled HTTP/2 between the sidecars and
//	          HTTP/1.1 to the application.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/internal/svidtest"
)

// benchBody is the size of the request and response bodies of
// BenchmarkHTTPRequest.
const benchBody = 1 << 10

// benchConfig is the production config (DefaultConfig, metrics on), with
// no drain period and a short drain so that each benchmark run stops
// quickly.
func benchConfig() Config {
	cfg := DefaultConfig()
	cfg.DrainPeriod = 0
	cfg.DrainTimeout = time.Second
	cfg.Registerer = prometheus.NewRegistry()
	return cfg
}

// benchLogger is the production logger (JSON at info level) writing
// nowhere: what is logged is encoded, as in production.
func benchLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
}

var loopback = netip.MustParseAddr("127.0.0.1")

// benchTopology starts the sidecars of one topology in front of the
// application at app and returns the address the client connects to (A's
// outbound port, whose original destination is the application's).
type benchTopology struct {
	name  string
	start func(b *testing.B, app netip.AddrPort) netip.AddrPort
}

var benchTopologies = []benchTopology{
	{"outbound", benchOutbound},
	{"mesh", benchMesh},
}

// benchOutbound starts one sidecar whose outbound connections go to app.
func benchOutbound(b *testing.B, app netip.AddrPort) netip.AddrPort {
	b.Helper()
	s := runServer(b, benchConfig(), benchLogger(), loopback, fixed(app), true)
	return netip.AddrPortFrom(loopback, s.cfg.OutboundPort)
}

// benchMesh starts two sidecars of one trust domain: B, listening on an
// address of this host that is not loopback (loopback is never meshed)
// and forwarding inbound to app; and A, whose outbound connections go to
// B's inbound port, in its mesh network, so in mTLS. Without iptables, A
// dials B's listener itself rather than an address B's capture takes.
func benchMesh(b *testing.B, app netip.AddrPort) netip.AddrPort {
	b.Helper()
	front, _, _ := meshPair(b, app, benchConfig(), benchConfig())
	return front
}

// meshPair starts sidecars B and A as benchMesh says, with the configs
// given (their identities set here), and returns A's outbound address and
// both servers.
func meshPair(b testing.TB, app netip.AddrPort, cfgA, cfgB Config) (netip.AddrPort, *Server, *Server) {
	b.Helper()
	ip := nonLoopbackIPv4(b)
	mesh := "mesh: {networks: [" + ip.String() + "/32]}"
	ca := svidtest.CA(b, "", "cluster.local")

	cfgB.Identity = readyIdentity{svidtest.SourceFor(b, ca, "spiffe://cluster.local/ns/b/sa/b")}
	// What A's application addressed: pod B's application (B's sidecar
	// connects to it there).
	sb := runServer(b, cfgB, benchLogger(), ip, fixed(app), true)
	apply(b, sb, mesh)

	cfgA.Identity = readyIdentity{svidtest.SourceFor(b, ca, "spiffe://cluster.local/ns/a/sa/a")}
	toB := netip.AddrPortFrom(ip, sb.cfg.InboundPort)
	sa := runServer(b, cfgA, benchLogger(), loopback, fixed(toB), true)
	if sa.detector.isOwnListener(toB) {
		// freePorts may hand A the port B listens on at another address.
		b.Fatalf("sidecar A got B's inbound port %d; run again", toB.Port())
	}
	apply(b, sa, mesh)
	return netip.AddrPortFrom(loopback, sa.cfg.OutboundPort), sa, sb
}

// dialBench connects to addr and closes the connection when b ends.
func dialBench(b *testing.B, addr netip.AddrPort) *net.TCPConn {
	b.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkHTTPRequest measures one HTTP/1.1 request with a 1 KiB body
// answered with a 1 KiB body, through the sidecars of each topology, on
// one keep-alive connection from the client: the cost per request once
// connections are pooled.
func BenchmarkHTTPRequest(b *testing.B) {
	body := bytes.Repeat([]byte("q"), benchBody)
	req := append([]byte("POST /bench?x=1 HTTP/1.1\r\nHost: b.example:8080\r\nUser-Agent: bench\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: "+strconv.Itoa(benchBody)+"\r\n\r\n"), body...)
	for _, topo := range benchTopologies {
		b.Run(topo.name, func(b *testing.B) {
			app := httpApp(b)
			c := dialBench(b, topo.start(b, app))
			br := bufio.NewReader(c)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if err := readMessage(br, "HTTP/1.1 200 "); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// appResponse is what httpApp answers to every request.
var appResponse = append([]byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "+
	strconv.Itoa(benchBody)+"\r\n\r\n"), bytes.Repeat([]byte("r"), benchBody)...)

// httpApp is an HTTP/1.1 application that answers every request on a
// keep-alive connection with a 1 KiB body, allocating nothing per request.
// A request it does not expect closes the connection, which the client
// sees as the proxy's error response.
func httpApp(b *testing.B) netip.AddrPort {
	b.Helper()
	return loopbackServer(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if err := readMessage(br, "POST /bench?x=1 HTTP/1.1"); err != nil {
				return
			}
			if _, err := c.Write(appResponse); err != nil {
				return
			}
		}
	})
}

// readMessage reads one HTTP/1.1 message from br, whose first line must
// start with first, and discards its body, which must have a
// Content-Length: the benchmark's peers speak just enough HTTP to see that
// the proxy sent what they expect.
func readMessage(br *bufio.Reader, first string) error {
	n := -1
	for i := 0; ; i++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) <= 2 {
			break // the blank line ending the head
		}
		if i == 0 {
			if !bytes.HasPrefix(line, []byte(first)) {
				return fmt.Errorf("first line %q, want %q…", line, first)
			}
			continue
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if n, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil {
				return fmt.Errorf("header %q: %w", line, err)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")), bytes.EqualFold(name, []byte("Connection")):
			return fmt.Errorf("header %q: the benchmark expects keep-alive and a Content-Length", line)
		}
	}
	if n < 0 {
		return errors.New("no Content-Length")
	}
	_, err := br.Discard(n)
	return err
}

// relayChunk is what BenchmarkTCPRelay writes per operation.
const relayChunk = 1 << 20

// BenchmarkTCPRelay measures the opaque TCP path's throughput: one
// connection through the sidecars of each topology carries b.N chunks of
// 1 MiB to an application that counts them (MB/s is the client's sending
// rate, the last byte counted by the application included).
func BenchmarkTCPRelay(b *testing.B) {
	chunk := make([]byte, relayChunk) // zeros: not HTTP, detected as opaque at once
	for _, topo := range benchTopologies {
		b.Run(topo.name, func(b *testing.B) {
			c := dialBench(b, topo.start(b, sinkApp(b)))
			b.ReportAllocs()
			b.SetBytes(relayChunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.CloseWrite(); err != nil {
				b.Fatal(err)
			}
			got, err := io.ReadAll(c)
			b.StopTimer()
			if want := strconv.Itoa(b.N * relayChunk); err != nil || string(got) != want {
				b.Fatalf("application counted %q, %v; want %s", got, err, want)
			}
		})
	}
}

// sinkApp reads each connection to its end and answers the number of
// bytes read.
func sinkApp(b *testing.B) netip.AddrPort {
	b.Helper()
	return loopbackServer(b, func(c net.Conn) {
		_ = c.SetDeadline(time.Time{}) // a long run may take more than Serve's deadline
		n, err := io.Copy(io.Discard, c)
		if err == nil {
			_, _ = io.WriteString(c, strconv.FormatInt(n, 10))
		}
	})
}

// BenchmarkTCPConnection measures one short opaque TCP connection through
// the sidecars of each topology: connect, send 1 KiB, half-close, read
// the 1 KiB echoed, close. It is the per-connection cost of the TCP path
// (accept, original destination, detection, upstream connect, in mTLS for
// the mesh, relay setup, the connection log line).
func BenchmarkTCPConnection(b *testing.B) {
	msg := make([]byte, benchBody)
	got := make([]byte, benchBody+1)
	for _, topo := range benchTopologies {
		b.Run(topo.name, func(b *testing.B) {
			front := topo.start(b, loopbackServer(b, func(c net.Conn) { _, _ = io.Copy(c, c) }))
			b.ReportAllocs()
			for b.Loop() {
				c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(front))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if err := c.CloseWrite(); err != nil {
					b.Fatal(err)
				}
				n, err := io.ReadFull(c, got)
				if n != benchBody || !errors.Is(err, io.ErrUnexpectedEOF) {
					b.Fatalf("read %d bytes then %v; want %d then the end", n, err, benchBody)
				}
				c.Close()
			}
		})
	}
}
