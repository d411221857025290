package injector

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/pillionmesh/pillion/proxy/istiometrics"
)

// workloadEnv is the proxy's environment naming pod: its workload, app and
// version as they are at admission, its namespace from the downward API
// (a pod created through a controller has none yet at admission). A value
// the pod does not tell is left out: the proxy writes "unknown".
func workloadEnv(pod *corev1.Pod) []corev1.EnvVar {
	env := []corev1.EnvVar{{Name: istiometrics.EnvNamespace, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"},
	}}}
	add := func(name, v string) {
		if v != "" {
			env = append(env, corev1.EnvVar{Name: name, Value: v})
		}
	}
	add(istiometrics.EnvName, workloadName(pod))
	add(istiometrics.EnvApp, firstLabel(pod.Labels, "app.kubernetes.io/name", "app"))
	add(istiometrics.EnvVersion, firstLabel(pod.Labels, "app.kubernetes.io/version", "version"))
	return env
}

// workloadName is the pod's workload as Istio names it: its controller's
// name, a ReplicaSet's without the pod-template-hash (the Deployment), a
// CronJob's Job's without the schedule's suffix (the CronJob); with no
// controller the pod's own name, or its generateName without the dash.
// "" when none is known, as for a pod template injected by `pillion
// inject`.
func workloadName(pod *corev1.Pod) string {
	for _, o := range pod.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		switch o.Kind {
		case "ReplicaSet":
			if h := pod.Labels["pod-template-hash"]; h != "" {
				if d, ok := strings.CutSuffix(o.Name, "-"+h); ok {
					return d
				}
			}
		case "Job":
			// A CronJob names its Jobs <cronjob>-<minutes since the epoch>.
			if i := strings.LastIndexByte(o.Name, '-'); i > 0 && len(o.Name)-i-1 >= 8 && allDigits(o.Name[i+1:]) {
				return o.Name[:i]
			}
		}
		return o.Name
	}
	if pod.Name != "" {
		return pod.Name
	}
	return strings.TrimSuffix(pod.GenerateName, "-")
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// firstLabel is the value of the first of keys that labels has.
func firstLabel(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}
