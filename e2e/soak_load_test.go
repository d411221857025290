package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop/grpc_testing"

	"github.com/pillionmesh/pillion/internal/meshtest"
)

// soakKind is one kind of traffic the soak sends from a to b.
type soakKind int

const (
	httpKeepAlive soakKind = iota // HTTP/1.1 on kept-alive client connections (pooled HTTP/2 between the sidecars)
	httpNewConn                   // HTTP/1.1, a new client connection per request
	grpcLongMsg                   // a message on a long-lived gRPC bidi stream
	grpcNewStream                 // a new gRPC bidi stream: two messages, then its end
	tcpNewConn                    // an opaque TCP connection per exchange (a new mTLS handshake each)
	tcpHeldMsg                    // a line on a long-lived opaque TCP connection
	soakKinds
)

func (k soakKind) String() string {
	return [...]string{"http1 keep-alive", "http1 new connection", "grpc long-stream message", "grpc new stream",
		"tcp new connection", "tcp held-connection line"}[k]
}

// mix is how the total rate is shared among the kinds, and by how many
// workers (for the long-lived kinds: streams, connections) each kind's
// share is sent. At 300 req/s: 90 + 60 + 60 + 30 + 45 + 15.
func (k soakKind) mix() (share float64, workers int) {
	switch k {
	case httpKeepAlive:
		return 0.30, 6
	case httpNewConn:
		return 0.20, 6
	case grpcLongMsg:
		return 0.20, 4
	case grpcNewStream:
		return 0.10, 3
	case tcpNewConn:
		return 0.15, 5
	default: // tcpHeldMsg
		return 0.05, 3
	}
}

// soakTally counts what the soak sent, by kind, keeps the first failures
// of each kind verbatim, and the slowest of each kind.
type soakTally struct {
	start   time.Time
	mu      sync.Mutex
	sent    [soakKinds]int
	failed  [soakKinds]int
	errs    [soakKinds][]string // the first few, "<offset> <error>"
	slowest [soakKinds]time.Duration
	slowAt  [soakKinds]time.Duration // when the slowest started, from start
	opaque  [soakKinds]int           // HTTP answered right, but as opaque TCP (errServedOpaque)
	maxGen  atomic.Int64
}

const soakKeptErrors = 3

// errServedOpaque is an HTTP request answered correctly on a connection
// that a's sidecar forwarded as opaque TCP, past both filter chains.
var errServedOpaque = errors.New("served as opaque TCP")

// timed runs op and records its outcome as one of kind k.
func (s *soakTally) timed(k soakKind, op func() error) {
	began := time.Now()
	err := op()
	took := time.Since(began)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent[k]++
	if took > s.slowest[k] {
		s.slowest[k], s.slowAt[k] = took, began.Sub(s.start)
	}
	if errors.Is(err, errServedOpaque) {
		s.opaque[k]++
		return
	}
	if err == nil {
		return
	}
	s.failed[k]++
	if len(s.errs[k]) < soakKeptErrors {
		s.errs[k] = append(s.errs[k], fmt.Sprintf("%6.1fs %v", began.Sub(s.start).Seconds(), err))
	}
}

// sawGeneration records the config generation b's inbound chain stamped
// on a response (x-soak-config), keeping the highest.
func (s *soakTally) sawGeneration(v string) error {
	g, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return fmt.Errorf("x-soak-config %q: want b's config generation: %w", v, err)
	}
	for {
		old := s.maxGen.Load()
		if g <= old || s.maxGen.CompareAndSwap(old, g) {
			return nil
		}
	}
}

func (s *soakTally) totals() (sent, failed, opaque int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range soakKinds {
		sent += s.sent[k]
		failed += s.failed[k]
		opaque += s.opaque[k]
	}
	return sent, failed, opaque
}

// String is a line per kind and the first failures of each.
func (s *soakTally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for k := range soakKinds {
		fmt.Fprintf(&b, "  %-26s %8d sent %6d failed %6d as opaque, slowest %v at %.1fs\n",
			k, s.sent[k], s.failed[k], s.opaque[k], s.slowest[k].Round(time.Millisecond), s.slowAt[k].Seconds())
	}
	for k := range soakKinds {
		if len(s.errs[k]) > 0 {
			fmt.Fprintf(&b, "  first failures, %s:\n    %s\n", k, strings.Join(s.errs[k], "\n    "))
		}
	}
	return b.String()
}

// paced calls op every workers/rate seconds from each of workers
// goroutines until ctx ends, with the worker's index and a sequence
// number. An op slower than its interval delays that worker's next (the
// ticker drops ticks): the rate reached is what the tally counts.
func paced(ctx context.Context, wg *sync.WaitGroup, rate float64, workers int, op func(w, i int)) {
	every := time.Duration(float64(workers) / rate * float64(time.Second))
	for w := range workers {
		wg.Go(func() {
			// Spread the workers over one interval.
			select {
			case <-ctx.Done():
				return
			case <-time.After(every * time.Duration(w) / time.Duration(workers)):
			}
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				op(w, i)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
}

// soakLoad is the traffic generator: what it sends to and the clients it
// sends with.
type soakLoad struct {
	m        *httpMesh
	tally    *soakTally
	rate     float64
	keep     []*meshtest.HTTPClient // one per httpKeepAlive worker, one kept-alive connection each
	fresh    *meshtest.HTTPClient   // a new connection per request
	grpc     grpc_testing.TestServiceClient
	tcpShort string // b's echo-until-EOF (meshtest.ServeEcho)
}

// run sends the mix at l.rate until stop ends and waits for every worker.
// What is in flight when stop ends is finished, not cancelled.
func (l *soakLoad) run(stop context.Context) {
	var wg sync.WaitGroup
	ctx := context.Background() // the operations' own
	share := func(k soakKind) (float64, int) {
		s, n := k.mix()
		return l.rate * s, n
	}

	r, n := share(httpKeepAlive)
	paced(stop, &wg, r, n, func(w, i int) {
		l.tally.timed(httpKeepAlive, func() error { return l.httpRequest(ctx, l.keep[w], w, i) })
	})
	r, n = share(httpNewConn)
	paced(stop, &wg, r, n, func(w, i int) { l.tally.timed(httpNewConn, func() error { return l.httpRequest(ctx, l.fresh, w, i) }) })
	r, n = share(grpcNewStream)
	paced(stop, &wg, r, n, func(w, i int) { l.tally.timed(grpcNewStream, func() error { return l.grpcStream(ctx, w, i) }) })
	r, n = share(tcpNewConn)
	paced(stop, &wg, r, n, func(w, i int) {
		l.tally.timed(tcpNewConn, func() error {
			msg := fmt.Sprintf("SOAK %d/%d", w, i)
			_, echoed, err := meshtest.Call(l.m.a.Pod, l.tcpShort, msg)
			if err == nil && echoed != msg {
				err = fmt.Errorf("sent %q, echoed %q", msg, echoed)
			}
			return err
		})
	})

	r, n = share(grpcLongMsg)
	streams := make([]*longStream, n)
	paced(stop, &wg, r, n, func(w, i int) {
		if streams[w] == nil {
			streams[w] = &longStream{client: l.grpc}
		}
		l.tally.timed(grpcLongMsg, func() error { return streams[w].ping(ctx, w, i) })
	})
	r, n = share(tcpHeldMsg)
	held := make([]*heldConn, n)
	paced(stop, &wg, r, n, func(w, i int) {
		l.tally.timed(tcpHeldMsg, func() error {
			var err error
			if held[w] == nil {
				held[w], err = dialHeld(l.m, 9001)
			}
			if err == nil {
				err = held[w].ping(i, 5*time.Second)
			}
			if err != nil && held[w] != nil { // start again on a new connection
				held[w].Close()
				held[w] = nil
			}
			return err
		})
	})
	wg.Wait()
	for _, s := range streams {
		s.close()
	}
	for _, h := range held {
		if h != nil {
			h.Close()
		}
	}
}

// httpRequest alternates GET /fixed and POST /body (1 to 4 KiB) and checks
// the status, the payload and that b's inbound chain stamped its config
// generation on the response.
func (l *soakLoad) httpRequest(ctx context.Context, c *meshtest.HTTPClient, w, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var body []byte
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+l.m.bAddr+"/fixed", nil)
	if i%2 == 1 {
		body = payloadBytes(1024 + (w*997+i*131)%3072)
		req, err = http.NewRequestWithContext(ctx, "POST", "http://"+l.m.bAddr+"/body", bytes.NewReader(body))
	}
	if err != nil {
		return err
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return fmt.Errorf("%s %s: reading the body: %w", req.Method, req.URL.Path, err)
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s (%s) %q", req.Method, req.URL.Path, res.Status, res.Header.Get("pillion-proxy-error"), got)
	}
	if res.Header.Get("x-soak-config") == "" && res.Header.Get("x-envoy-upstream-service-time") == "" {
		// Neither sidecar's HTTP path saw it: a's took the connection
		// for opaque TCP (its client sent nothing within the sniff
		// timeout) and the bytes reached the app as they were.
		return errServedOpaque
	}
	if err := l.tally.sawGeneration(res.Header.Get("x-soak-config")); err != nil {
		return fmt.Errorf("%s %s: %w; the response's header: %v", req.Method, req.URL.Path, err, res.Header)
	}
	if body == nil {
		if string(got) != "hello" {
			return fmt.Errorf("GET /fixed: %q, want hello", got)
		}
		return nil
	}
	var saw bodySaw
	sum := sha256.Sum256(body)
	if err := json.Unmarshal(got, &saw); err != nil || saw.Bytes != int64(len(body)) || saw.SHA256 != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("POST /body of %d bytes: the app saw %s (%v)", len(body), got, err)
	}
	return nil
}

// grpcStream opens a bidi stream, exchanges two messages and ends it.
func (l *soakLoad) grpcStream(ctx context.Context, w, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := l.grpc.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for j := range 2 {
		msg := fmt.Appendf(nil, "new %d/%d/%d", w, i, j)
		if err := exchange(stream, msg); err != nil {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after CloseSend: %v, want the server's end", err)
	}
	return nil
}

type bidi = grpc.BidiStreamingClient[grpc_testing.StreamingOutputCallRequest, grpc_testing.StreamingOutputCallResponse]

// exchange sends msg on stream and checks the echo.
func exchange(stream bidi, msg []byte) error {
	if err := stream.Send(&grpc_testing.StreamingOutputCallRequest{Payload: &grpc_testing.Payload{Body: msg}}); err != nil {
		return fmt.Errorf("send %q: %w", msg, err)
	}
	res, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("answer to %q: %w", msg, err)
	}
	if !bytes.Equal(res.GetPayload().GetBody(), msg) {
		return fmt.Errorf("sent %q, echoed %q", msg, res.GetPayload().GetBody())
	}
	return nil
}

// longStream is a bidi stream kept open for the whole soak; after a
// failure the next ping opens a new one. Only its worker uses it.
type longStream struct {
	client grpc_testing.TestServiceClient
	stream bidi
	cancel context.CancelFunc
}

func (s *longStream) ping(ctx context.Context, w, i int) error {
	if s.stream == nil {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := s.client.FullDuplexCall(sctx)
		if err != nil {
			cancel()
			return fmt.Errorf("opening the stream: %w", err)
		}
		s.stream, s.cancel = stream, cancel
	}
	done := make(chan error, 1)
	go func() { done <- exchange(s.stream, fmt.Appendf(nil, "long %d/%d", w, i)) }()
	select {
	case err := <-done:
		if err != nil {
			s.close()
		}
		return err
	case <-time.After(5 * time.Second):
		s.close() // ends the stuck exchange
		<-done
		return errors.New("no answer in 5 s")
	}
}

func (s *longStream) close() {
	if s == nil || s.cancel == nil {
		return
	}
	s.cancel()
	s.stream, s.cancel = nil, nil
}
