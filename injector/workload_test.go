package injector

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pillionmesh/pillion/proxy/istiometrics"
)

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
