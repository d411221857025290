package discovery

import (
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/workload"
)

// The informers keep only what Lookup reads: a cluster holds many pods,
// and a pod's spec and status are mostly containers discovery never looks
// at. Each trim function builds a new object from the few fields it keeps,
// so applying it to an object it already trimmed gives the same object
// (client-go asks transforms to be idempotent). ResourceVersion is kept:
// the informer resumes its watch from it.

// trim is the informers' transform: objects of other types pass unchanged.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return trimPod(o), nil
	case *corev1.Service:
		return trimService(o), nil
	case *discv1.EndpointSlice:
		return trimSlice(o), nil
	}
	return obj, nil
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, ResourceVersion: m.ResourceVersion}
}

// trimPod keeps whether the injector marked the pod (pillion.io/status,
// present or not: its value is dropped), its service account and node,
// what decides whether its IPs are its own (phase, host network), and what
// names its workload (workload.Inputs, and its generateName).
func trimPod(p *corev1.Pod) *corev1.Pod {
	meta := trimMeta(p.ObjectMeta)
	meta.GenerateName = p.GenerateName
	meta.Labels, meta.OwnerReferences = workload.Inputs(&p.ObjectMeta)
	out := &corev1.Pod{
		ObjectMeta: meta,
		Spec: corev1.PodSpec{
			ServiceAccountName: p.Spec.ServiceAccountName,
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIPs: p.Status.PodIPs},
	}
	if _, ok := p.Annotations[injector.StatusAnnotation]; ok {
		out.Annotations = map[string]string{injector.StatusAnnotation: ""}
	}
	return out
}

// trimService keeps the cluster IPs and, of each port, what names and
// resolves it.
func trimService(s *corev1.Service) *corev1.Service {
	out := &corev1.Service{
		ObjectMeta: trimMeta(s.ObjectMeta),
		Spec: corev1.ServiceSpec{
			Type:       s.Spec.Type,
			ClusterIP:  s.Spec.ClusterIP,
			ClusterIPs: s.Spec.ClusterIPs,
		},
	}
	if len(s.Spec.Ports) > 0 {
		out.Spec.Ports = make([]corev1.ServicePort, len(s.Spec.Ports))
		for i, p := range s.Spec.Ports {
			out.Spec.Ports[i] = corev1.ServicePort{
				Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.TargetPort, AppProtocol: p.AppProtocol,
			}
		}
	}
	return out
}

// trimSlice keeps the Service it belongs to (its label), its address
// type, ports, and of each endpoint the first address (the one consumers
// use, https://issue.k8s.io/106267), conditions, pod and zone.
func trimSlice(s *discv1.EndpointSlice) *discv1.EndpointSlice {
	out := &discv1.EndpointSlice{
		ObjectMeta:  trimMeta(s.ObjectMeta),
		AddressType: s.AddressType,
		Ports:       s.Ports,
	}
	if svc, ok := s.Labels[discv1.LabelServiceName]; ok {
		out.Labels = map[string]string{discv1.LabelServiceName: svc}
	}
	if len(s.Endpoints) > 0 {
		out.Endpoints = make([]discv1.Endpoint, len(s.Endpoints))
		for i, e := range s.Endpoints {
			te := discv1.Endpoint{Conditions: e.Conditions, Zone: e.Zone}
			if len(e.Addresses) > 0 {
				te.Addresses = e.Addresses[:1:1]
			}
			if r := e.TargetRef; r != nil {
				te.TargetRef = &corev1.ObjectReference{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
			}
			out.Endpoints[i] = te
		}
	}
	return out
}

// sameTrimmed reports whether two trimmed objects of one type differ only
// in their ResourceVersion: an update discovery can ignore (most pod
// updates are status changes it does not keep).
func sameTrimmed(a, b any) bool {
	switch a := a.(type) {
	case *corev1.Pod:
		b, ok := b.(*corev1.Pod)
		if !ok {
			return false
		}
		ac, bc := *a, *b
		ac.ResourceVersion, bc.ResourceVersion = "", ""
		return equality.Semantic.DeepEqual(&ac, &bc)
	case *corev1.Service:
		b, ok := b.(*corev1.Service)
		if !ok {
			return false
		}
		ac, bc := *a, *b
		ac.ResourceVersion, bc.ResourceVersion = "", ""
		return equality.Semantic.DeepEqual(&ac, &bc)
	case *discv1.EndpointSlice:
		b, ok := b.(*discv1.EndpointSlice)
		if !ok {
			return false
		}
		ac, bc := *a, *b
		ac.ResourceVersion, bc.ResourceVersion = "", ""
		return equality.Semantic.DeepEqual(&ac, &bc)
	}
	return false
}
