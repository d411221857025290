package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/appprobe/prober"
	"github.com/pillionmesh/pillion/redirect"
)

// podIPUsage is the help of `pillion proxy --pod-ip`.
const podIPUsage = "the pod's IP (the injector passes status.podIP in $" + appprobe.PodIPEnvVar + "): the application's probes" +
	" that name no host go there, as kubelet would send them, from 127.0.0.6 (::6), which capture lets through (so do those whose host" +
	" is this IP); empty: they go to 127.0.0.1 (outside Kubernetes), and the log says so at start"

// parsePodIP validates --pod-ip: empty (no pod IP), or an IP address a
// pod can have, without a zone.
func parsePodIP(v string) (netip.Addr, error) {
	if v == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(v)
	switch {
	case err != nil:
		err = errors.New("not an IP address")
	case a.Zone() != "":
		err = errors.New("has a zone; a pod's IP has none")
	case a.Is4In6():
		err = errors.New("IPv4-mapped; give the IPv4 address")
	case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast():
		err = errors.New("not an address a pod has (loopback, unspecified or multicast)")
	}
	if err != nil {
		return netip.Addr{}, badUsage(fmt.Errorf("--pod-ip: %q: %w", v, err))
	}
	return a, nil
}

// appProbeOptions says where the application-probe runner sends the
// probes that name no host: to the pod's IP from the inbound sidecar's
// source, which capture lets through, or, without a pod IP, to 127.0.0.1.
func appProbeOptions(podIP netip.Addr) prober.Options {
	if !podIP.IsValid() {
		return prober.Options{}
	}
	return prober.Options{PodIP: podIP, Source: redirect.InboundSourceFor(podIP)}
}
