package discovery

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	discv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
)

// TestTrim: the informers keep only what Lookup reads, and trimming twice
// changes nothing.
func TestTrim(t *testing.T) {
	managed := []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
	fullPod := pod("shop", "web-1", "web", true, "10.1.0.1")
	fullPod.ManagedFields = managed
	fullPod.Labels = map[string]string{"app": "web", "team": "checkout", "pod-template-hash": "5d8f7c9b4"}
	fullPod.GenerateName = "web-5d8f7c9b4-"
	fullPod.OwnerReferences = []metav1.OwnerReference{
		{Kind: "Node", Name: "node-1"},
		{Kind: "ReplicaSet", Name: "web-5d8f7c9b4", APIVersion: "apps/v1", UID: "5678", Controller: ptr(true), BlockOwnerDeletion: ptr(true)},
	}
	fullPod.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = "{...}"
	fullPod.Spec.Containers = []corev1.Container{{Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}}
	fullPod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	fullPod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "web", Ready: true}}
	fullSvc := service("shop", "web", []string{"10.96.0.10"}, svcPort("http", 80, 8080, "http"))
	fullSvc.ManagedFields = managed
	fullSvc.Spec.Selector = map[string]string{"app": "web"}
	fullSvc.Spec.Ports[0].NodePort = 30080
	fullSlice := slice("shop", "web-a", "web", discv1.AddressTypeIPv4, []discv1.EndpointPort{slicePortOf("http", 8080)},
		endpoint("10.1.0.1", "shop", "web-1", "zone-a", ptr(true), nil, nil))
	fullSlice.ManagedFields = managed
	fullSlice.Labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
	fullSlice.Endpoints[0].NodeName = ptr("node-1")
	fullSlice.Endpoints[0].Hints = &discv1.EndpointHints{ForZones: []discv1.ForZone{{Name: "zone-a"}}}
	fullSlice.Endpoints[0].TargetRef.UID = "1234"
	fullSlice.Endpoints[0].Addresses = append(fullSlice.Endpoints[0].Addresses, "10.1.0.100")

	idx, _ := testIndex(t, nil, fullPod, fullSvc, fullSlice)
	for _, tt := range []struct {
		store interface {
			GetByKey(string) (any, bool, error)
		}
		want runtime.Object
	}{
		{idx.pods.GetStore(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "shop", Name: "web-1", GenerateName: "web-5d8f7c9b4-", Annotations: map[string]string{statusMarker: ""},
				// What names the workload: its labels and controller.
				Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b4"},
				OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-5d8f7c9b4", Controller: ptr(true)}},
			},
			Spec:   corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-1"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.0.1"}}},
		}},
		{idx.services.GetStore(), service("shop", "web", []string{"10.96.0.10"}, svcPort("http", 80, 8080, "http"))},
		{idx.slices.GetStore(), slice("shop", "web-a", "web", discv1.AddressTypeIPv4, []discv1.EndpointPort{slicePortOf("http", 8080)},
			endpoint("10.1.0.1", "shop", "web-1", "zone-a", ptr(true), nil, nil))},
	} {
		key := "shop/" + tt.want.(metav1.Object).GetName()
		got, ok, err := tt.store.GetByKey(key)
		if !ok || err != nil {
			t.Fatalf("%T %s: not in the store (%v)", tt.want, key, err)
		}
		got.(metav1.Object).SetResourceVersion("")
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("trimmed %T (-want +got):\n%s", tt.want, diff)
		}
		again, _ := trim(got)
		if diff := cmp.Diff(got, again); diff != "" {
			t.Errorf("trimming %T twice (-once +twice):\n%s", tt.want, diff)
		}
	}
}

// TestIndexFollowsEvents: lookups follow creates, updates and deletes;
// an update to fields the index drops notifies nobody, one it keeps names
// its topics.
func TestIndexFollowsEvents(t *testing.T) {
	idx, client := testIndex(t, nil)
	changes := make(chan change, 100)
	idx.onChange(func(c change) { changes <- c })
	ctx := context.Background()
	dst := netip.MustParseAddrPort("10.1.0.1:8080")
	waitKind := func(want discoveryv1.Destination_Kind) *discoveryv1.Destination {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if d := idx.Lookup(dst); d.Kind == want {
				return d
			}
		}
		t.Fatalf("Lookup(%s) never became %v", dst, want)
		return nil
	}
	nextChange := func() change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no change notified")
			return change{}
		}
	}

	p, err := client.CoreV1().Pods("shop").Create(ctx, pod("shop", "web-1", "web", false, "10.1.0.1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := waitKind(discoveryv1.Destination_POD); d.Endpoints[0].Meshed {
		t.Error("an unmarked pod is meshed")
	}
	want := []topic{{topicPod, "shop/web-1"}, {topicAddr, "10.1.0.1"}}
	if diff := cmp.Diff(want, nextChange().topics, cmp.AllowUnexported(topic{})); diff != "" {
		t.Errorf("create: topics (-want +got):\n%s", diff)
	}

	// A status change the index does not keep: counted, not notified.
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if p, err = client.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the update event", func() bool {
		return testutil.ToFloat64(idx.events.WithLabelValues(kindPod, "update")) == 1
	})
	// The injector's marker: notified, and the pod is meshed.
	p.Annotations = map[string]string{statusMarker: "{}"}
	if _, err = client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := nextChange()
	if diff := cmp.Diff(append(want, want...), c.topics, cmp.AllowUnexported(topic{})); diff != "" {
		t.Errorf("update: topics (-want +got):\n%s", diff)
	}
	if d := idx.Lookup(dst); !d.Endpoints[0].Meshed || d.Endpoints[0].Identity != "spiffe://"+testTD+"/ns/shop/sa/web" {
		t.Errorf("after marking the pod: %v", d)
	}
	if len(changes) != 0 {
		t.Errorf("%d more changes notified: the ignored update was one", len(changes))
	}

	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKind(discoveryv1.Destination_UNKNOWN)
	if got := testutil.ToFloat64(idx.events.WithLabelValues(kindPod, "delete")); got != 1 {
		t.Errorf("pod delete events = %v, want 1", got)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
