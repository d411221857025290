package injector

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/pillionmesh/pillion/proxy/istiometrics"
	"github.com/pillionmesh/pillion/workload"
)

// workloadEnv is the proxy's environment naming pod: its workload, app and
// version as they are at admission (workload.Of), its namespace from the
// downward API (a pod created through a controller has none yet at
// admission). A value the pod does not tell is left out: the proxy writes
// "unknown".
func workloadEnv(pod *corev1.Pod) []corev1.EnvVar {
	env := []corev1.EnvVar{{Name: istiometrics.EnvNamespace, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"},
	}}}
	add := func(name, v string) {
		if v != "" {
			env = append(env, corev1.EnvVar{Name: name, Value: v})
		}
	}
	n := workload.Of(pod)
	add(istiometrics.EnvName, n.Workload)
	add(istiometrics.EnvApp, n.App)
	add(istiometrics.EnvVersion, n.Version)
	return env
}
