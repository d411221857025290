package kubetest

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSetReady(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	st := corev1.PodStatus{
		Conditions:        []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: t0}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app"}, {Name: "side"}},
	}
	setReady(&st, true, t0)
	setReady(&st, true, t1) // no change: the transition time stays
	want := corev1.PodStatus{
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: t0},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: t0},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: t0},
		},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true}, {Name: "side", Ready: true}},
	}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Fatalf("ready (-want +got):\n%s", diff)
	}
	setReady(&st, false, t1)
	want.Conditions[1] = corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, LastTransitionTime: t1}
	want.Conditions[2] = corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: t1}
	want.ContainerStatuses = []corev1.ContainerStatus{{Name: "app"}, {Name: "side"}}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Fatalf("not ready (-want +got):\n%s", diff)
	}
}

func TestEndpoints(t *testing.T) {
	yes, no := true, false
	node := "n1"
	slices := []discoveryv1.EndpointSlice{
		{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-b"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{
				// Unset conditions read as the API says: ready, serving, not terminating.
				{Addresses: []string{"198.18.0.10"}},
				{Addresses: []string{"198.18.0.9"}, NodeName: &node, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-9"},
					Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
			},
		},
		{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-a"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"198.18.0.2"}, TargetRef: &corev1.ObjectReference{Kind: "Other", Name: "x"},
					Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &no, Terminating: &no}},
			},
		},
	}
	want := []Endpoint{
		{Addr: "198.18.0.2"},
		{Addr: "198.18.0.9", Pod: "web-9", Node: "n1", Serving: true, Terminating: true},
		{Addr: "198.18.0.10", Ready: true, Serving: true},
	}
	if diff := cmp.Diff(want, Endpoints(slices)); diff != "" {
		t.Errorf("Endpoints (-want +got):\n%s", diff)
	}
	port, name := int32(8080), "http"
	slices[1].Ports = []discoveryv1.EndpointPort{{Name: &name, Port: &port}}
	got := DescribeSlices(slices)
	wantDesc := "\n  web-b IPv4 ports=[] 198.18.0.9(pod=web-9 ready=false serving=true terminating=true) 198.18.0.10(pod= ready=true serving=true terminating=false)" +
		"\n  web-a IPv4 ports=[http:8080/<nil>] 198.18.0.2(pod= ready=false serving=false terminating=false)"
	if got != wantDesc {
		t.Errorf("DescribeSlices =%s\nwant%s", got, wantDesc)
	}
	if got := DescribeSlices(nil); got != "no slices" {
		t.Errorf("DescribeSlices(nil) = %q", got)
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 100}
	for i := range 1000 {
		_, _ = b.Write([]byte(strings.Repeat(string(rune('a'+i%26)), 9) + "\n"))
	}
	if n := len(b.buf); n > 200 {
		t.Errorf("buffer holds %d bytes, want at most 2×max", n)
	}
	// The last 25 bytes start mid-line: the tail starts at the next line.
	if got, want := b.Tail(25), "kkkkkkkkk\nlllllllll\n"; got != want {
		t.Errorf("Tail(25) = %q, want %q", got, want)
	}
	short := &tailBuffer{max: 100}
	_, _ = short.Write([]byte("one line"))
	if got := short.Tail(25); got != "one line" {
		t.Errorf("Tail of a short log = %q", got)
	}
}
