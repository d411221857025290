// Package workload names a pod's workload, app and version as Istio's
// telemetry labels name them (source_workload, destination_app, …). The
// injector passes a pod's own names to its sidecar; discovery sends each
// endpoint's with its answer, so that the sidecar calling it can label
// its requests with both ends, as Kiali's graph reads them.
package workload

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names are a pod's workload, app and version; "" is not known.
type Names struct {
	// Workload is the pod's controller as Istio names it: a ReplicaSet's
	// without the pod-template-hash (the Deployment), a CronJob's Job's
	// without the schedule's suffix (the CronJob), any other controller's
	// own name; with no controller the pod's generateName without its
	// dash, else its name (so that the pod is named the same before the
	// API server names it, at admission, and after).
	Workload string
	// App is the pod's app.kubernetes.io/name label, else its app label.
	App string
	// Version is the pod's app.kubernetes.io/version label, else its
	// version label.
	Version string
}

// The labels Of reads.
const (
	labelApp         = "app"
	labelAppName     = "app.kubernetes.io/name"
	labelVersion     = "version"
	labelAppVersion  = "app.kubernetes.io/version"
	labelPodTemplate = "pod-template-hash"
)

// Of returns pod's names. A pod template (`pillion inject` on a
// Deployment) has no name and no owner: its workload is "".
func Of(pod *corev1.Pod) Names {
	return Names{
		Workload: name(pod),
		App:      first(pod.Labels, labelAppName, labelApp),
		Version:  first(pod.Labels, labelAppVersion, labelVersion),
	}
}

// Inputs returns the part of meta that Of reads: the labels it looks at
// and the controller reference, for a cache that keeps pods trimmed
// (discovery's informer). Of gives the same names for a pod of meta and
// for one of only the returned fields and meta's name and generateName;
// applied to what it returned, Inputs returns the same.
func Inputs(meta *metav1.ObjectMeta) (labels map[string]string, owners []metav1.OwnerReference) {
	for _, k := range [...]string{labelApp, labelAppName, labelVersion, labelAppVersion, labelPodTemplate} {
		if v, ok := meta.Labels[k]; ok {
			if labels == nil {
				labels = make(map[string]string, 2)
			}
			labels[k] = v
		}
	}
	if c := controller(meta.OwnerReferences); c != nil {
		owners = []metav1.OwnerReference{{Kind: c.Kind, Name: c.Name, Controller: c.Controller}}
	}
	return labels, owners
}

func controller(refs []metav1.OwnerReference) *metav1.OwnerReference {
	for i, o := range refs {
		if o.Controller != nil && *o.Controller {
			return &refs[i]
		}
	}
	return nil
}

func name(pod *corev1.Pod) string {
	if o := controller(pod.OwnerReferences); o != nil {
		switch o.Kind {
		case "ReplicaSet":
			if h := pod.Labels[labelPodTemplate]; h != "" {
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
	// generateName first: the injector sees a pod before the API server
	// names it, discovery after, and both must give the same name.
	if g := strings.TrimSuffix(pod.GenerateName, "-"); g != "" {
		return g
	}
	return pod.Name
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// first is the value of the first of keys that labels has.
func first(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}
