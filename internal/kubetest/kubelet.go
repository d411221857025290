package kubetest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// This file plays the kubelet's part: there is none, so a test registers a
// Node and reports its Pods running, with the addresses of its test pods
// (internal/testpod), through the status subresource as a kubelet does.
// That, a Node and a Service are what the EndpointSlice controller needs.

// ErrNoNode is RunPod's error for a pod without spec.nodeName on an Env
// where CreateNode was never called.
var ErrNoNode = errors.New("kubetest: pod has no spec.nodeName and no node was created")

// CreateNode registers a Node called name, labelled
// kubernetes.io/hostname=name and reported Ready, as a kubelet registers
// its node. RunPod puts pods without spec.nodeName on the first node
// created.
func (e *Env) CreateNode(ctx context.Context, name string) (*corev1.Node, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{corev1.LabelHostname: name},
	}}
	nodes := e.Client.CoreV1().Nodes()
	created, err := nodes.Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: create node %s: %w", name, err)
	}
	now := metav1.Now()
	created.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if created, err = nodes.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("kubetest: node %s status: %w", name, err)
	}
	e.mu.Lock()
	if e.firstNode == "" {
		e.firstNode = name
	}
	e.mu.Unlock()
	return created, nil
}

// RunPod creates a copy of pod and reports it running at ip and Ready, as
// the kubelet of its node would: phase Running, status.podIP and podIPs
// ip, conditions PodScheduled, Initialized, ContainersReady and Ready true,
// every container running and ready. Empty fields are filled in: the
// namespace with "default", spec.nodeName with the first node CreateNode
// made (ErrNoNode without one), the containers with one called "app". It
// returns the pod as stored after the status update.
//
// The cluster is IPv4 only (so are Services' ClusterIPs): ip is normally a
// test pod's IPv4.
func (e *Env) RunPod(ctx context.Context, pod *corev1.Pod, ip netip.Addr) (*corev1.Pod, error) {
	p := pod.DeepCopy()
	p.Namespace = cmp.Or(p.Namespace, metav1.NamespaceDefault)
	if p.Spec.NodeName == "" {
		e.mu.Lock()
		p.Spec.NodeName = e.firstNode
		e.mu.Unlock()
		if p.Spec.NodeName == "" {
			return nil, ErrNoNode
		}
	}
	if len(p.Spec.Containers) == 0 {
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "pillion.invalid/app"}}
	}
	pods := e.Client.CoreV1().Pods(p.Namespace)
	created, err := pods.Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     ip.String(),
		PodIPs:    []corev1.PodIP{{IP: ip.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	for _, c := range created.Spec.Containers {
		created.Status.ContainerStatuses = append(created.Status.ContainerStatuses, corev1.ContainerStatus{
			Name:    c.Name,
			Image:   c.Image,
			Started: new(true),
			State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	setReady(&created.Status, true, now)
	updated, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return updated, nil
}

// SetPodReady sets the pod's Ready and ContainersReady conditions, and its
// containers' ready flags, to ready through the status subresource, as a
// kubelet does when a readiness probe passes or fails.
func (e *Env) SetPodReady(ctx context.Context, ns, name string, ready bool) error {
	pods := e.Client.CoreV1().Pods(ns)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		setReady(&p.Status, ready, metav1.Now())
		_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("kubetest: set pod %s/%s ready=%t: %w", ns, name, ready, err)
	}
	return nil
}

// setReady sets st's Ready and ContainersReady conditions (moving their
// transition time only when they change) and its containers' ready flags.
func setReady(st *corev1.PodStatus, ready bool, now metav1.Time) {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for _, typ := range []corev1.PodConditionType{corev1.ContainersReady, corev1.PodReady} {
		i := slices.IndexFunc(st.Conditions, func(c corev1.PodCondition) bool { return c.Type == typ })
		if i < 0 {
			st.Conditions = append(st.Conditions, corev1.PodCondition{Type: typ})
			i = len(st.Conditions) - 1
		}
		if c := &st.Conditions[i]; c.Status != status {
			c.Status, c.LastTransitionTime = status, now
		}
	}
	for i := range st.ContainerStatuses {
		st.ContainerStatuses[i].Ready = ready
	}
}

// DeletePod deletes a pod with the given grace period. With 0 the pod is
// gone at once (its endpoint leaves the slices); with more it stays,
// Terminating, until DeletePod is called again with 0, since no kubelet
// finishes the deletion.
func (e *Env) DeletePod(ctx context.Context, ns, name string, grace time.Duration) error {
	secs := int64(grace / time.Second)
	err := e.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &secs})
	if err != nil {
		return fmt.Errorf("kubetest: delete pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// WaitEndpoints polls the EndpointSlices of Service ns/service (those
// labelled kubernetes.io/service-name=service) every 50ms until want
// accepts them, and returns them. When ctx ends first it returns the last
// slices seen and an error that describes them.
func (e *Env) WaitEndpoints(ctx context.Context, ns, service string, want func([]discoveryv1.EndpointSlice) bool) ([]discoveryv1.EndpointSlice, error) {
	opts := metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var (
		last    []discoveryv1.EndpointSlice
		lastErr error
	)
	for {
		list, err := e.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, opts)
		if err == nil {
			last, lastErr = list.Items, nil
			if want(last) {
				return last, nil
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return last, fmt.Errorf("kubetest: endpoint slices of %s/%s: %w (last list: %w)", ns, service, ctx.Err(), lastErr)
			}
			return last, fmt.Errorf("kubetest: endpoint slices of %s/%s: %w; last seen: %s", ns, service, ctx.Err(), DescribeSlices(last))
		case <-tick.C:
		}
	}
}

// Endpoint is one address of an EndpointSlice, with its conditions as the
// API says to read them (nil Ready and Serving are true, nil Terminating is
// false).
type Endpoint struct {
	Addr                        string
	Pod                         string // targetRef's name, for a Pod
	Node                        string
	Ready, Serving, Terminating bool
}

// Endpoints flattens slices into their addresses, sorted by address.
func Endpoints(slices []discoveryv1.EndpointSlice) []Endpoint {
	var out []Endpoint
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			var pod, node string
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				pod = ep.TargetRef.Name
			}
			if ep.NodeName != nil {
				node = *ep.NodeName
			}
			for _, a := range ep.Addresses {
				out = append(out, Endpoint{
					Addr: a, Pod: pod, Node: node,
					Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
					Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
					Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
				})
			}
		}
	}
	sortEndpoints(out)
	return out
}

func sortEndpoints(eps []Endpoint) {
	slices.SortFunc(eps, func(a, b Endpoint) int {
		pa, errA := netip.ParseAddr(a.Addr)
		pb, errB := netip.ParseAddr(b.Addr)
		if errA == nil && errB == nil {
			return pa.Compare(pb)
		}
		return strings.Compare(a.Addr, b.Addr)
	})
}

// DescribeSlices renders slices on one line each, for error messages:
// name, address type, ports, then each address with its conditions.
func DescribeSlices(slices []discoveryv1.EndpointSlice) string {
	if len(slices) == 0 {
		return "no slices"
	}
	var b strings.Builder
	for _, s := range slices {
		fmt.Fprintf(&b, "\n  %s %s ports=[", s.Name, s.AddressType)
		for i, p := range s.Ports {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "%s:%s/%s", deref(p.Name), derefInt(p.Port), derefProto(p.Protocol))
		}
		b.WriteString("]")
		for _, ep := range Endpoints([]discoveryv1.EndpointSlice{s}) {
			fmt.Fprintf(&b, " %s(pod=%s ready=%t serving=%t terminating=%t)", ep.Addr, ep.Pod, ep.Ready, ep.Serving, ep.Terminating)
		}
	}
	return b.String()
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func derefInt(p *int32) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

func derefProto(p *corev1.Protocol) string {
	if p == nil {
		return "<nil>"
	}
	return string(*p)
}
