package injector

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pillionmesh/pillion/proxy/istiometrics"
)

// TestWorkloadName: the workload is named as Istio names it, from the
// pod's controller.
func TestWorkloadName(t *testing.T) {
	yes, no := true, false
	owner := func(kind, name string, controller *bool) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: controller}}
	}
	for _, tt := range []struct {
		name string
		pod  metav1.ObjectMeta
		want string
	}{
		{"deployment", metav1.ObjectMeta{GenerateName: "web-7d4b9c8f5-", Labels: map[string]string{"pod-template-hash": "7d4b9c8f5"}, OwnerReferences: owner("ReplicaSet", "web-7d4b9c8f5", &yes)}, "web"},
		{"replicaset of no deployment", metav1.ObjectMeta{OwnerReferences: owner("ReplicaSet", "web-rs", &yes)}, "web-rs"},
		{"statefulset", metav1.ObjectMeta{Name: "db-0", OwnerReferences: owner("StatefulSet", "db", &yes)}, "db"},
		{"cronjob", metav1.ObjectMeta{OwnerReferences: owner("Job", "nightly-29012345", &yes)}, "nightly"},
		{"job", metav1.ObjectMeta{OwnerReferences: owner("Job", "migrate-v2", &yes)}, "migrate-v2"},
		{"owner not the controller", metav1.ObjectMeta{Name: "p", OwnerReferences: owner("ReplicaSet", "x", &no)}, "p"},
		{"bare pod", metav1.ObjectMeta{Name: "debug"}, "debug"},
		{"bare pod, generated name", metav1.ObjectMeta{GenerateName: "debug-"}, "debug"},
		{"nothing known", metav1.ObjectMeta{}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := workloadName(&corev1.Pod{ObjectMeta: tt.pod}); got != tt.want {
				t.Errorf("workloadName = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestWorkloadEnv: the namespace from the downward API; name, app and
// version as literals, left out when the pod does not tell them.
func TestWorkloadEnv(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "a", "app.kubernetes.io/name": "shop", "version": "v2"}}}
	ns := corev1.EnvVar{Name: istiometrics.EnvNamespace, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}
	want := []corev1.EnvVar{ns, {Name: istiometrics.EnvName, Value: "p"}, {Name: istiometrics.EnvApp, Value: "shop"}, {Name: istiometrics.EnvVersion, Value: "v2"}}
	if diff := cmp.Diff(want, workloadEnv(pod)); diff != "" {
		t.Errorf("workloadEnv (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.EnvVar{ns}, workloadEnv(&corev1.Pod{})); diff != "" {
		t.Errorf("workloadEnv of an empty pod (-want +got):\n%s", diff)
	}
}
