package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/pillionmesh/pillion/sidecar"
)

// Namespace is what the injector knows of a pod's namespace.
type Namespace struct {
	Name string
	// InjectionEnabled says the namespace carries the label
	// pillion.io/inject=enabled: its pods are injected unless they opt
	// out. The webhook learns it from which of its two entries the API
	// server called (each has its own namespaceSelector), so it never
	// reads namespaces itself; `pillion inject` sets it, as the user asked.
	InjectionEnabled bool
}

// Skip is why a pod was left as it was; "" means it was injected.
type Skip string

// The reasons to leave a pod alone. They are also the values of the
// injector's metrics label "reason".
const (
	SkipAlreadyInjected   Skip = "already_injected"   // carries pillion.io/status
	SkipExcludedNamespace Skip = "excluded_namespace" // kube-system, or excludeNamespaces
	SkipHostNetwork       Skip = "host_network"       // shares the node's network: no namespace to capture in
	SkipOptedOut          Skip = "opted_out"          // pillion.io/inject: "disabled"
	SkipNotAsked          Skip = "not_asked"          // neither the pod nor its namespace asked
)

// Result is what Inject did.
type Result struct {
	// Pod is the injected pod, a copy; nil when Skipped.
	Pod *corev1.Pod
	// Skipped is why the pod was left alone, "" when it was injected.
	Skipped Skip
}

// Names of what the injector adds. A pod that already has a container or
// volume of one of these names is refused.
const (
	InitName           = "pillion-init"
	ProxyName          = "pillion-proxy"
	IdentityVolumeName = "pillion-identity"
	ConfigVolumeName   = "pillion-config"
)

// Status is the value of the pillion.io/status annotation, as JSON: what
// was injected, so that tools (and `pillion inject` run twice) can tell.
type Status struct {
	InitContainers []string `json:"initContainers"`
	Containers     []string `json:"containers"`
	Volumes        []string `json:"volumes"`
	Native         bool     `json:"native"`
	// AppProbes lists the probe paths rewritten through the sidecar.
	AppProbes []string `json:"appProbes,omitempty"`
}

// Inject decides whether pod gets the sidecar and, if so, returns an
// injected copy; pod itself is never changed. It is a pure function of its
// arguments. The pipeline:
//
//  1. decide: skip pods that are already injected, in an excluded
//     namespace, on the host network, opted out, or that nobody asked for;
//  2. read the pod's annotations into options (an error names each bad
//     annotation: the webhook denies the pod with it);
//  3. refuse pods that already use a name the injector adds;
//  4. on a copy: rewrite the app's probes through the sidecar's health
//     port, add the identity and config volumes, the capture init
//     container, the sidecar (native or classic), and the annotations
//     (status, default container, Prometheus scrape, proxy config).
func Inject(pod *corev1.Pod, ns Namespace, cfg *Config) (Result, error) {
	res, err := inject(pod, ns, cfg)
	return res, prefixed(err)
}

func inject(pod *corev1.Pod, ns Namespace, cfg *Config) (Result, error) {
	if skip, err := decide(pod, ns, cfg); skip != "" || err != nil {
		return Result{Skipped: skip}, err
	}
	opts, err := parseOptions(pod.Annotations, cfg)
	if err != nil {
		return Result{}, err
	}
	if err := checkNames(pod); err != nil {
		return Result{}, err
	}
	out := pod.DeepCopy()
	probes := rewriteProbes(out, opts.rewriteProbes)
	vols := volumes(cfg, opts)
	out.Spec.Volumes = append(out.Spec.Volumes, vols...)
	initC := initContainer(cfg, opts)
	proxyC := proxyContainer(cfg, opts, probes)
	proxyC.Env = append(proxyC.Env, workloadEnv(pod)...)
	proxyC.Args = append(proxyC.Args, drainArgs(out.Spec.TerminationGracePeriodSeconds, opts.native)...)
	status := Status{Native: opts.native, AppProbes: paths(probes)}
	for _, v := range vols {
		status.Volumes = append(status.Volumes, v.Name)
	}
	if opts.native {
		// The capture rules first, then the sidecar, then the app's own
		// init containers: they run with the mesh already in place.
		out.Spec.InitContainers = slices.Concat([]corev1.Container{initC, proxyC}, out.Spec.InitContainers)
		status.InitContainers = []string{InitName, ProxyName}
		status.Containers = []string{}
	} else {
		// Without native sidecars the app's init containers run before
		// the sidecar exists, so capture goes last to leave them their
		// network; the sidecar goes first among the containers, and its
		// postStart hook holds the app back until it is ready.
		out.Spec.InitContainers = append(out.Spec.InitContainers, initC)
		out.Spec.Containers = slices.Concat([]corev1.Container{proxyC}, out.Spec.Containers)
		status.InitContainers = []string{InitName}
		status.Containers = []string{ProxyName}
	}
	annotate(out, pod, opts, status)
	return Result{Pod: out}, nil
}

// decide says why pod is to be left alone, or "" to inject it.
func decide(pod *corev1.Pod, ns Namespace, cfg *Config) (Skip, error) {
	if _, ok := pod.Annotations[StatusAnnotation]; ok {
		return SkipAlreadyInjected, nil
	}
	if slices.Contains(cfg.ExcludeNamespaces, ns.Name) {
		return SkipExcludedNamespace, nil
	}
	if pod.Spec.HostNetwork {
		return SkipHostNetwork, nil
	}
	switch v, ok := pod.Annotations[InjectAnnotation]; {
	case !ok && ns.InjectionEnabled:
		return "", nil
	case !ok:
		return SkipNotAsked, nil
	case v == "enabled":
		return "", nil
	case v == "disabled":
		return SkipOptedOut, nil
	default:
		return "", annotationError(InjectAnnotation, v, `want "enabled" or "disabled"`)
	}
}

// checkNames refuses a pod that already has a container or volume named
// like the ones the injector adds: the pod would be ambiguous, and
// kubectl and the sidecar's tooling would pick the wrong one.
func checkNames(pod *corev1.Pod) error {
	var errs []error
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == InitName || c.Name == ProxyName {
				errs = append(errs, fmt.Errorf("container %q: the name is reserved for the pillion sidecar; rename it, or annotate the pod %s: \"disabled\"", c.Name, InjectAnnotation))
			}
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == IdentityVolumeName || v.Name == ConfigVolumeName {
			errs = append(errs, fmt.Errorf("volume %q: the name is reserved for the pillion sidecar", v.Name))
		}
	}
	return errors.Join(errs...)
}

// annotate writes the status and the annotations the sidecar and the
// tools around it read, leaving any the user set.
func annotate(out, orig *corev1.Pod, opts options, status Status) {
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	st, err := json.Marshal(status)
	if err != nil {
		panic(err) // a struct of strings and bools always marshals
	}
	out.Annotations[StatusAnnotation] = string(st)
	setDefault := func(k, v string) {
		if _, ok := out.Annotations[k]; !ok {
			out.Annotations[k] = v
		}
	}
	if opts.proxyConfig != "" {
		setDefault(ProxyConfigAnnotation, opts.proxyConfig)
	}
	// kubectl logs/exec pick this container, not the sidecar.
	if len(orig.Spec.Containers) > 0 {
		setDefault("kubectl.kubernetes.io/default-container", orig.Spec.Containers[0].Name)
	}
	// Prometheus' kubernetes_sd convention; an app that set its own keeps
	// them.
	if _, ok := out.Annotations["prometheus.io/scrape"]; !ok {
		out.Annotations["prometheus.io/scrape"] = "true"
		out.Annotations["prometheus.io/port"] = strconv.Itoa(int(sidecar.PrometheusPort))
		out.Annotations["prometheus.io/path"] = sidecar.PrometheusPath
	}
}
