package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pillionmesh/pillion/internal/testpod"
)

// testService is grpc_testing's TestService as the tests below need it.
//
// UnaryCall answers ResponseSize bytes of payloadBytes. It sends the peer it
// saw in the header metadata "x-peer", echoes "x-echo" and "x-echo-bin" in
// the header and trailer metadata, and puts the sha256 of the request
// payload in the trailer "x-request-sha256". With ResponseStatus it fails
// with that status and an ErrorInfo detail. With metadata "x-sleep-ms" it
// first waits that long, or until its context ends: it signals started when
// it begins waiting and sends how its context ended (nil if it did not) on
// ended.
//
// StreamingOutputCall sends one message per ResponseParameters, in order,
// of that size, starting with the index as "%04d".
//
// FullDuplexCall echoes each request's payload as soon as it arrives.
type testService struct {
	grpc_testing.UnimplementedTestServiceServer
	started chan struct{}
	ended   chan error
}

func payloadBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i>>9)
	}
	return b
}

func (s *testService) UnaryCall(ctx context.Context, req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-sleep-ms"); len(v) > 0 {
		ms, _ := strconv.Atoi(v[0])
		s.started <- struct{}{}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			s.ended <- nil
		case <-ctx.Done():
			s.ended <- ctx.Err()
			return nil, ctx.Err()
		}
	}
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		withDetails, err := status.New(codes.Code(st.GetCode()), st.GetMessage()).WithDetails(notFoundDetail)
		if err != nil {
			return nil, err
		}
		return nil, withDetails.Err()
	}
	var peerAddr string
	if p, ok := peer.FromContext(ctx); ok {
		peerAddr = p.Addr.String()
	}
	sum := sha256.Sum256(req.GetPayload().GetBody())
	header := metadata.Pairs("x-peer", peerAddr)
	trailer := metadata.Pairs("x-request-sha256", hex.EncodeToString(sum[:]))
	for _, k := range []string{"x-echo", "x-echo-bin"} {
		header.Append(k, md.Get(k)...)
		trailer.Append(k, md.Get(k)...)
	}
	if err := grpc.SetHeader(ctx, header); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, trailer); err != nil {
		return nil, err
	}
	return &grpc_testing.SimpleResponse{Payload: &grpc_testing.Payload{Body: payloadBytes(int(req.GetResponseSize()))}}, nil
}

var notFoundDetail = &errdetails.ErrorInfo{Reason: "WIDGET_NOT_FOUND", Domain: "pillion.test", Metadata: map[string]string{"widget": "w-42"}}

func (s *testService) StreamingOutputCall(req *grpc_testing.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[grpc_testing.StreamingOutputCallResponse]) error {
	for i, p := range req.GetResponseParameters() {
		body := fmt.Appendf(nil, "%04d", i)
		body = append(body, bytes.Repeat([]byte{'.'}, max(int(p.GetSize())-len(body), 0))...)
		if err := stream.Send(&grpc_testing.StreamingOutputCallResponse{Payload: &grpc_testing.Payload{Body: body}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testService) FullDuplexCall(stream grpc.BidiStreamingServer[grpc_testing.StreamingOutputCallRequest, grpc_testing.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&grpc_testing.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// serveGRPC serves a testService on addr in pod until t's cleanups run.
func serveGRPC(t *testing.T, pod *testpod.Pod, addr string) *testService {
	t.Helper()
	svc := &testService{started: make(chan struct{}, 1), ended: make(chan error, 1)}
	l, err := pod.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	grpc_testing.RegisterTestServiceServer(srv, svc)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return svc
}

// grpcClient connects from pod, as an application, to addr.
func grpcClient(t *testing.T, pod *testpod.Pod, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return pod.Dial(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestHTTPGRPC(t *testing.T) {
	m := newHTTPMesh(t, "", "")
	svc := serveGRPC(t, m.b.Pod, ":8090")
	addr := hostPort(m.b.Pod.IPv4, 8090)
	conn := grpcClient(t, m.a.Pod, addr)
	client := grpc_testing.NewTestServiceClient(conn)

	t.Run("unary: payloads, header and trailer metadata", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		bin := string([]byte{0, 1, 2, 0xfe, 0xff})
		ctx = metadata.AppendToOutgoingContext(ctx, "x-echo", "hello", "x-echo-bin", bin)
		reqBody := payloadBytes(128 << 10)
		var header, trailer metadata.MD
		res, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{
			ResponseSize: 256 << 10,
			Payload:      &grpc_testing.Payload{Body: reqBody},
		}, grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.GetPayload().GetBody(), payloadBytes(256<<10)) {
			t.Errorf("response payload of %d bytes differs from the server's %d", len(res.GetPayload().GetBody()), 256<<10)
		}
		// The server's peer is b's inbound sidecar, from 127.0.0.6.
		if p := header.Get("x-peer"); len(p) != 1 || netip.MustParseAddrPort(p[0]).Addr() != netip.MustParseAddr("127.0.0.6") {
			t.Errorf("server saw peer %q, want b's sidecar from 127.0.0.6", p)
		}
		sum := sha256.Sum256(reqBody)
		for _, c := range []struct {
			where string
			md    metadata.MD
			key   string
			want  string
		}{
			{"header", header, "x-echo", "hello"},
			{"header", header, "x-echo-bin", bin},
			{"trailer", trailer, "x-echo", "hello"},
			{"trailer", trailer, "x-echo-bin", bin},
			{"trailer", trailer, "x-request-sha256", hex.EncodeToString(sum[:])},
		} {
			if got := c.md.Get(c.key); len(got) != 1 || got[0] != c.want {
				t.Errorf("%s metadata %s = %q, want %q", c.where, c.key, got, c.want)
			}
		}
	})

	t.Run("server streaming: every message, in order", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const n = 200
		req := &grpc_testing.StreamingOutputCallRequest{}
		for i := range n {
			req.ResponseParameters = append(req.ResponseParameters, &grpc_testing.ResponseParameters{Size: int32(100 + 97*(i%50))})
		}
		stream, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			res, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if i != n {
					t.Errorf("stream ended after %d messages, want %d", i, n)
				}
				break
			}
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			body := res.GetPayload().GetBody()
			if want := fmt.Sprintf("%04d", i); len(body) != int(req.ResponseParameters[min(i, n-1)].Size) || !bytes.HasPrefix(body, []byte(want)) {
				t.Fatalf("message %d: %d bytes starting %q, want %d starting %q", i, len(body), body[:min(len(body), 4)], req.ResponseParameters[min(i, n-1)].Size, want)
			}
		}
	})

	t.Run("full duplex ping-pong: each answer before the next request", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var rtts []time.Duration
		for i := range 50 {
			ping := fmt.Appendf(nil, "ping %d", i)
			start := time.Now()
			if err := stream.Send(&grpc_testing.StreamingOutputCallRequest{Payload: &grpc_testing.Payload{Body: ping}}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			// A proxy that buffered either direction would leave this
			// waiting until the stream's deadline.
			res, err := stream.Recv()
			if err != nil {
				t.Fatalf("answer to ping %d: %v", i, err)
			}
			rtts = append(rtts, time.Since(start))
			if !bytes.Equal(res.GetPayload().GetBody(), ping) {
				t.Fatalf("answer to ping %d: %q", i, res.GetPayload().GetBody())
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Errorf("after CloseSend: %v, want the server's clean end", err)
		}
		t.Logf("round trips: median %v, slowest %v", median(rtts), slices.Max(rtts))
		if med := median(rtts); med > 100*time.Millisecond {
			t.Errorf("median round trip %v, want < 100 ms: something holds messages back", med)
		}
	})

	t.Run("deadline shorter than the server's work", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-sleep-ms", "5000")
		start := time.Now()
		_, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{})
		took := time.Since(start)
		t.Logf("failed after %v", took)
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("error %v, want DeadlineExceeded", err)
		}
		if took > 1500*time.Millisecond {
			t.Errorf("the call failed after %v, want about its 300 ms deadline", took)
		}
		serverEnded(t, svc, 2*time.Second)
	})

	t.Run("cancellation reaches the server", func(t *testing.T) {
		// No deadline, so no grpc-timeout for the server to act on: only
		// the client's RST_STREAM, relayed by both sidecars, ends its wait.
		ctx, cancel := context.WithCancel(context.Background())
		ctx = metadata.AppendToOutgoingContext(ctx, "x-sleep-ms", "5000")
		errc := make(chan error, 1)
		go func() {
			_, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{})
			errc <- err
		}()
		select {
		case <-svc.started:
		case <-time.After(5 * time.Second):
			cancel()
			t.Fatal("the call did not reach the server")
		}
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Errorf("error %v, want Canceled", err)
		}
		if err := serverEnded(t, svc, time.Second); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server's context ended with %v, want cancelled", err)
		}
	})

	t.Run("error status with details", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const msg = "no widget named w-42 (ünïcode, 100% sure)"
		_, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{
			ResponseStatus: &grpc_testing.EchoStatus{Code: int32(codes.NotFound), Message: msg},
		})
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.NotFound || st.Message() != msg {
			t.Fatalf("error %v, want NotFound %q", err, msg)
		}
		details := st.Details()
		if len(details) != 1 {
			t.Fatalf("details %v, want the server's ErrorInfo", details)
		}
		if got, ok := details[0].(*errdetails.ErrorInfo); !ok || !proto.Equal(got, notFoundDetail) {
			t.Errorf("detail %v, want %v", details[0], notFoundDetail)
		}
	})

	conn.Close()
	l2, ok := m.a.WaitConnection("outbound", addr, 5*time.Second)
	if !ok {
		t.Fatalf("a's sidecar logged no connection to %s", addr)
	}
	if l2.Protocol != "h2c" {
		t.Errorf("a's sidecar took the gRPC connection for %q, want h2c", l2.Protocol)
	}
}

// serverEnded waits up to timeout for a slow UnaryCall to report how its
// context ended, and fails t if it did not end early.
func serverEnded(t *testing.T, svc *testService, timeout time.Duration) error {
	t.Helper()
	select {
	case <-svc.started:
	default:
	}
	select {
	case err := <-svc.ended:
		if err == nil {
			t.Errorf("the server worked its full 5 s: its context was not cancelled")
		}
		return err
	case <-time.After(timeout):
		t.Errorf("the server's context was not cancelled within %v", timeout)
		return nil
	}
}
