package injector

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/sidecar"
)

// appProbes are the app's probes that now go through the sidecar.
type appProbes = appprobe.Set

// rewriteProbes points the app containers' HTTP, TCP and gRPC probes at
// the sidecar's health port, which is never captured, and returns the
// original probes for the sidecar to run against the app at the pod's IP,
// as kubelet would.
// Under STRICT mTLS kubelet's plaintext probes would otherwise be refused
// like any caller outside the mesh. Exec probes need no network and stay.
// A probe on a named port that the container does not declare, or that is
// otherwise invalid, stays as it is: kubelet will report it.
func rewriteProbes(pod *corev1.Pod, enabled bool) appProbes {
	if !enabled {
		return nil
	}
	set := appProbes{}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		for _, p := range []struct {
			kind  string
			probe *corev1.Probe
		}{{"livez", c.LivenessProbe}, {"readyz", c.ReadinessProbe}, {"startupz", c.StartupProbe}} {
			if p.probe == nil {
				continue
			}
			orig, ok := appProbe(c, p.probe)
			key := appprobe.Path(c.Name, p.kind)
			// A probe the sidecar would refuse (a port out of range) is
			// left for kubelet to report, not handed to the sidecar.
			if !ok || (appprobe.Set{key: orig}).Validate() != nil {
				continue
			}
			set[key] = orig
			p.probe.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: key, Port: intstr.FromInt32(int32(sidecar.HealthPort)), Scheme: corev1.URISchemeHTTP,
			}}
		}
	}
	if len(set) == 0 {
		return nil
	}
	return set
}

// appProbe converts a kubelet probe to the sidecar's form.
func appProbe(c *corev1.Container, p *corev1.Probe) (appprobe.Probe, bool) {
	out := appprobe.Probe{TimeoutSeconds: p.TimeoutSeconds}
	switch h := p.ProbeHandler; {
	case h.HTTPGet != nil:
		port, ok := resolvePort(c, h.HTTPGet.Port)
		if !ok {
			return out, false
		}
		g := &appprobe.HTTPGet{Path: h.HTTPGet.Path, Port: port, Host: h.HTTPGet.Host, Scheme: string(h.HTTPGet.Scheme)}
		for _, hd := range h.HTTPGet.HTTPHeaders {
			g.HTTPHeaders = append(g.HTTPHeaders, appprobe.Header{Name: hd.Name, Value: hd.Value})
		}
		out.HTTPGet = g
	case h.TCPSocket != nil:
		port, ok := resolvePort(c, h.TCPSocket.Port)
		if !ok {
			return out, false
		}
		out.TCPSocket = &appprobe.TCPSocket{Port: port, Host: h.TCPSocket.Host}
	case h.GRPC != nil:
		out.GRPC = &appprobe.GRPC{Port: h.GRPC.Port, Service: h.GRPC.Service}
	default:
		return out, false
	}
	return out, true
}

// resolvePort turns a probe's port, a number or the name of one of the
// container's ports, into a number.
func resolvePort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, p.IntVal > 0 && p.IntVal < 1<<16
	}
	i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.StrVal })
	if i < 0 {
		return 0, false
	}
	return c.Ports[i].ContainerPort, true
}

// paths lists the rewritten probes' paths, sorted.
func paths(s appProbes) []string {
	var out []string
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
