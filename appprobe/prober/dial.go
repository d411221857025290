package prober

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Options say where a Handler sends the probes that name no host, and
// from which address. The zero Options send them to 127.0.0.1 from the
// kernel's choice of source, for a sidecar outside Kubernetes.
type Options struct {
	// PodIP is the pod's IP, status.podIP, where kubelet sends a probe
	// that names no host, and so where the Handler sends it: an
	// application bound to its pod IP only is then judged up, and one
	// bound to localhost only is judged down, as kubelet would judge them.
	// The zero Addr means 127.0.0.1.
	PodIP netip.Addr
	// Source is the local address of every connection to PodIP: the
	// probes that name no host, and those whose host is PodIP itself. In
	// a pod with pillion's capture it must be redirect.InboundSourceFor
	// (PodIP), 127.0.0.6 or ::6: the proxy's connections to its own pod
	// IP from any other source are captured back into its inbound
	// listener. The zero Addr is the kernel's choice. Connections to any
	// other host are always from the kernel's choice.
	Source netip.Addr
}

// Validate checks that PodIP and Source are addresses without a zone,
// that Source is set only with PodIP and in its family, and that neither
// is unspecified or IPv4-mapped (a mapped PodIP would be dialled as IPv4
// from an IPv6 Source). Errors name the field, as appprobe.Parse's do.
func (o Options) Validate() error {
	if err := o.validate(); err != nil {
		return fmt.Errorf("prober: %w", err)
	}
	return nil
}

func (o Options) validate() error {
	if err := validateAddr(o.PodIP); err != nil {
		return fmt.Errorf("pod IP: %w", err)
	}
	if err := validateAddr(o.Source); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	switch {
	case o.Source.IsValid() && !o.PodIP.IsValid():
		return fmt.Errorf("source: %s without a pod IP: it is only for connections to the pod IP", o.Source)
	case o.Source.IsValid() && o.Source.Is4() != o.PodIP.Is4():
		return fmt.Errorf("source: %s is not of the family of the pod IP %s", o.Source, o.PodIP)
	}
	return nil
}

func validateAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return nil
	case a.Zone() != "":
		return fmt.Errorf("%s: has a zone", a)
	case a.IsUnspecified():
		return fmt.Errorf("%s: unspecified", a)
	case a.Is4In6():
		return fmt.Errorf("%s: IPv4-mapped; give the IPv4 address", a)
	}
	return nil
}

// host is the host of the probes that name none.
func (o Options) host() string {
	if o.PodIP.IsValid() {
		return o.PodIP.String()
	}
	return defaultHost
}

// dialer connects the probes to the application: from Source to PodIP,
// from the kernel's choice of source elsewhere. Host names are dialled as
// they are: kubelet dials a probe's host as given.
type dialer struct{ podIP, source netip.Addr }

// DialContext has the signature of net.Dialer's; the deadline is ctx's.
func (d dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	if ap, err := netip.ParseAddrPort(addr); err == nil && d.source.IsValid() && ap.Addr().Unmap() == d.podIP {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(d.source, 0))
	}
	c, err := nd.DialContext(ctx, network, addr)
	if nd.LocalAddr != nil && errors.Is(err, syscall.EADDRNOTAVAIL) {
		return nil, fmt.Errorf("from %s, which is not an address of this pod (pillion init adds ::6 to lo where IPv6 is enabled): %w",
			d.source, err)
	}
	return c, err
}

// tcpDial runs a tcpSocket probe: it passes when a connection opens.
func (h *Handler) tcpDial(ctx context.Context, c compiled) result {
	what := "tcp " + c.tcp
	conn, err := h.dial.DialContext(ctx, "tcp", c.tcp)
	if err != nil {
		return failed(ctx, c, what, err)
	}
	conn.Close()
	return result{http.StatusOK, what + ": connected"}
}

// grpcCheck runs a grpc probe: one Health/Check in plaintext, as kubelet.
func (h *Handler) grpcCheck(ctx context.Context, c compiled, userAgent string) result {
	what := fmt.Sprintf("grpc %s service %q", c.grpc.target, c.grpc.service)
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return h.dial.DialContext(ctx, "tcp", addr)
		}),
	}
	if userAgent != "" {
		opts = append(opts, grpc.WithUserAgent(userAgent))
	}
	conn, err := grpc.NewClient("passthrough:///"+c.grpc.target, opts...)
	if err != nil {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", what, err)}
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: c.grpc.service})
	if err != nil {
		if status.Code(err) == codes.DeadlineExceeded {
			return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: no answer within %s", what, c.timeout)}
		}
		return failed(ctx, c, what, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("%s: %s", what, st)}
	}
	return result{http.StatusOK, what + ": SERVING"}
}
