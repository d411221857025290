package workload

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var yes, no = true, false

func owner(kind, name string, controller *bool) []metav1.OwnerReference {
	return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: controller, UID: "u-1", APIVersion: "apps/v1"}}
}

// cases are pods and the names Istio gives them.
var cases = []struct {
	name string
	pod  metav1.ObjectMeta
	want Names
}{
	{"deployment", metav1.ObjectMeta{GenerateName: "web-7d4b9c8f5-", Labels: map[string]string{"pod-template-hash": "7d4b9c8f5", "app": "web", "version": "v1"}, OwnerReferences: owner("ReplicaSet", "web-7d4b9c8f5", &yes)}, Names{"web", "web", "v1"}},
	{"replicaset of no deployment", metav1.ObjectMeta{OwnerReferences: owner("ReplicaSet", "web-rs", &yes)}, Names{Workload: "web-rs"}},
	{"statefulset", metav1.ObjectMeta{Name: "db-0", OwnerReferences: owner("StatefulSet", "db", &yes)}, Names{Workload: "db"}},
	{"cronjob", metav1.ObjectMeta{OwnerReferences: owner("Job", "nightly-29012345", &yes)}, Names{Workload: "nightly"}},
	{"job", metav1.ObjectMeta{OwnerReferences: owner("Job", "migrate-v2", &yes)}, Names{Workload: "migrate-v2"}},
	{"owner not the controller", metav1.ObjectMeta{Name: "p", OwnerReferences: owner("ReplicaSet", "x", &no)}, Names{Workload: "p"}},
	{"second owner the controller", metav1.ObjectMeta{Name: "p", OwnerReferences: append(owner("ReplicaSet", "x", &no), owner("StatefulSet", "s", &yes)...)}, Names{Workload: "s"}},
	{"bare pod", metav1.ObjectMeta{Name: "debug"}, Names{Workload: "debug"}},
	{"bare pod, generated name", metav1.ObjectMeta{GenerateName: "debug-"}, Names{Workload: "debug"}},
	{"bare pod, generated name, named by the API server", metav1.ObjectMeta{GenerateName: "debug-", Name: "debug-x7k2p"}, Names{Workload: "debug"}},
	{"kubernetes labels first", metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "a", "app.kubernetes.io/name": "shop", "version": "v1", "app.kubernetes.io/version": "2.0"}}, Names{"p", "shop", "2.0"}},
	{"empty kubernetes label skipped", metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "a", "app.kubernetes.io/name": ""}}, Names{"p", "a", ""}},
	{"nothing known", metav1.ObjectMeta{}, Names{}},
}

// TestOf: the workload, app and version are named as Istio names them.
func TestOf(t *testing.T) {
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Of(&corev1.Pod{ObjectMeta: tt.pod})); diff != "" {
				t.Errorf("Of (-want +got):\n%s", diff)
			}
		})
	}
}

// TestInputs: a pod cut down to what Inputs keeps has the same names, and
// Inputs keeps nothing else (an unrelated label, a non-controller owner).
func TestInputs(t *testing.T) {
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			meta := *tt.pod.DeepCopy()
			meta.Labels = map[string]string{"team": "x"}
			for k, v := range tt.pod.Labels {
				meta.Labels[k] = v
			}
			meta.OwnerReferences = append(meta.OwnerReferences, owner("Node", "n", nil)...)
			labels, owners := Inputs(&meta)
			if _, ok := labels["team"]; ok {
				t.Errorf("Inputs kept the label team: %v", labels)
			}
			if len(owners) > 1 {
				t.Errorf("Inputs kept %d owners, want the controller only", len(owners))
			}
			trimmed := metav1.ObjectMeta{Name: meta.Name, GenerateName: meta.GenerateName, Labels: labels, OwnerReferences: owners}
			if diff := cmp.Diff(tt.want, Of(&corev1.Pod{ObjectMeta: trimmed})); diff != "" {
				t.Errorf("Of of the trimmed pod (-want +got):\n%s", diff)
			}
			l2, o2 := Inputs(&trimmed)
			if diff := cmp.Diff(labels, l2); diff != "" {
				t.Errorf("Inputs of its own result changed the labels (-first +second):\n%s", diff)
			}
			if diff := cmp.Diff(owners, o2); diff != "" {
				t.Errorf("Inputs of its own result changed the owners (-first +second):\n%s", diff)
			}
		})
	}
}
