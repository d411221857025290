package injector

import (
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/redirect"
)

// The annotations and the label users write, and the one the injector
// writes (StatusAnnotation). Their names are a contract with users
// (README.md, "On a cluster: the injector").
const (
	// InjectLabel on a namespace, "enabled", injects its pods.
	InjectLabel = "pillion.io/inject"
	// InjectAnnotation on a pod, "enabled" or "disabled", overrides its
	// namespace.
	InjectAnnotation = "pillion.io/inject"
	// StatusAnnotation records what was injected; a pod carrying it is
	// never injected again.
	StatusAnnotation = "pillion.io/status"

	// The capture exclusions, mapped one to one onto `pillion init`'s
	// flags of the same names.
	ExcludeInboundPortsAnnotation     = "traffic.pillion.io/exclude-inbound-ports"
	ExcludeOutboundPortsAnnotation    = "traffic.pillion.io/exclude-outbound-ports"
	ExcludeOutboundIPRangesAnnotation = "traffic.pillion.io/exclude-outbound-ip-ranges"
	IncludeInboundPortsAnnotation     = "traffic.pillion.io/include-inbound-ports"

	// NativeAnnotation, "true" or "false", overrides the config's
	// nativeSidecars for one pod.
	NativeAnnotation = "sidecar.pillion.io/native"
	// The sidecar's resources; each overrides the config's value.
	ProxyCPUAnnotation         = "sidecar.pillion.io/proxy-cpu"
	ProxyMemoryAnnotation      = "sidecar.pillion.io/proxy-memory"
	ProxyCPULimitAnnotation    = "sidecar.pillion.io/proxy-cpu-limit"
	ProxyMemoryLimitAnnotation = "sidecar.pillion.io/proxy-memory-limit"
	// LogLevelAnnotation sets the sidecar's --log-level.
	LogLevelAnnotation = "sidecar.pillion.io/log-level"
	// RewriteProbesAnnotation, "true" or "false", overrides the config's
	// rewriteAppProbes for one pod.
	RewriteProbesAnnotation = "sidecar.pillion.io/rewrite-app-probes"
	// ProxyConfigAnnotation holds the sidecar's config file. The pod may
	// bring its own; otherwise the injector writes the config's. The
	// sidecar reads it through a downward API volume, so a change to the
	// annotation reaches the running sidecar, which reloads it.
	ProxyConfigAnnotation = "sidecar.pillion.io/proxy-config"
	// SVIDSecretAnnotation names the Secret holding the pod's SVID when
	// the identity comes from files.
	SVIDSecretAnnotation = "sidecar.pillion.io/svid-secret"
)

// captureAnnotations maps each exclusion annotation to its init flag.
var captureAnnotations = []struct{ annotation, flag string }{
	{IncludeInboundPortsAnnotation, "include-inbound-ports"},
	{ExcludeInboundPortsAnnotation, "exclude-inbound-ports"},
	{ExcludeOutboundPortsAnnotation, "exclude-outbound-ports"},
	{ExcludeOutboundIPRangesAnnotation, "exclude-outbound-ip-ranges"},
}

// options is what a pod's annotations ask of its injection, validated,
// with the config's values where the pod says nothing.
type options struct {
	native        bool
	rewriteProbes bool
	logLevel      string
	resources     corev1.ResourceRequirements
	proxyConfig   string
	svidSecret    string
	// initArgs are `pillion init`'s flags for the exclusions the pod
	// asked for, normalised (sorted, no duplicates), in a fixed order.
	initArgs []string
}

// parseOptions reads the pod's annotations. The error names every
// annotation that is wrong and why, one per line.
func parseOptions(ann map[string]string, cfg *Config) (options, error) {
	o := options{
		native:        cfg.NativeSidecars,
		rewriteProbes: cfg.RewriteAppProbes,
		logLevel:      cfg.LogLevel,
		resources:     *cfg.Resources.DeepCopy(),
		proxyConfig:   cfg.ProxyConfig,
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(boolAnnotation(ann, NativeAnnotation, &o.native))
	add(boolAnnotation(ann, RewriteProbesAnnotation, &o.rewriteProbes))
	if v, ok := ann[LogLevelAnnotation]; ok {
		o.logLevel = v
		if !validLogLevel(v) {
			add(annotationError(LogLevelAnnotation, v, "want debug, info, warn or error"))
		}
	}
	add(quantityAnnotation(ann, ProxyCPUAnnotation, &o.resources.Requests, corev1.ResourceCPU))
	add(quantityAnnotation(ann, ProxyMemoryAnnotation, &o.resources.Requests, corev1.ResourceMemory))
	add(quantityAnnotation(ann, ProxyCPULimitAnnotation, &o.resources.Limits, corev1.ResourceCPU))
	add(quantityAnnotation(ann, ProxyMemoryLimitAnnotation, &o.resources.Limits, corev1.ResourceMemory))
	add(checkRequestsWithinLimits(o.resources))
	if v, ok := ann[ProxyConfigAnnotation]; ok {
		o.proxyConfig = v
		if err := configfile.Check([]byte(v), builtin.Registry()); err != nil {
			add(fmt.Errorf("annotation %s: %w", ProxyConfigAnnotation, err))
		}
	}
	if cfg.Identity.Secret != nil {
		o.svidSecret = cfg.Identity.Secret.Name
		if v, ok := ann[SVIDSecretAnnotation]; ok {
			o.svidSecret = v
			add(checkSecretName("annotation "+SVIDSecretAnnotation, v))
		}
	}
	var err error
	o.initArgs, err = captureArgs(ann)
	add(err)
	if len(errs) > 0 {
		return options{}, errors.Join(errs...)
	}
	return o, nil
}

// captureArgs validates the exclusion annotations with `pillion init`'s
// own rules and returns them as its flags.
func captureArgs(ann map[string]string) ([]string, error) {
	f := redirect.DefaultFlags()
	set := map[string]*string{
		"include-inbound-ports":      &f.IncludeInboundPorts,
		"exclude-inbound-ports":      &f.ExcludeInboundPorts,
		"exclude-outbound-ports":     &f.ExcludeOutboundPorts,
		"exclude-outbound-ip-ranges": &f.ExcludeOutboundIPRanges,
	}
	for _, c := range captureAnnotations {
		if v, ok := ann[c.annotation]; ok {
			*set[c.flag] = v
		}
	}
	// The errors name what the user wrote: the annotation of each flag.
	rc, err := f.ConfigNamed(func(flag string) string {
		for _, c := range captureAnnotations {
			if c.flag == flag {
				return c.annotation
			}
		}
		return "--" + flag // not one an annotation sets
	})
	if err != nil {
		lines := strings.Split(err.Error(), "\n")
		for i, l := range lines {
			lines[i] = "annotation " + l
		}
		return nil, errors.New(strings.Join(lines, "\n"))
	}
	normal := map[string]string{
		"include-inbound-ports":      rc.IncludeInboundPorts.String(),
		"exclude-inbound-ports":      rc.ExcludeInboundPorts.String(),
		"exclude-outbound-ports":     rc.ExcludeOutboundPorts.String(),
		"exclude-outbound-ip-ranges": rc.ExcludeOutboundIPRanges.String(),
	}
	var args []string
	for _, c := range captureAnnotations {
		if _, ok := ann[c.annotation]; ok {
			args = append(args, fmt.Sprintf("--%s=%s", c.flag, normal[c.flag]))
		}
	}
	return args, nil
}

func annotationError(name, value, why string) error {
	return fmt.Errorf("annotation %s: %q: %s", name, value, why)
}

func boolAnnotation(ann map[string]string, name string, dst *bool) error {
	v, ok := ann[name]
	if !ok {
		return nil
	}
	switch v {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		return annotationError(name, v, `want "true" or "false"`)
	}
	return nil
}

func quantityAnnotation(ann map[string]string, name string, list *corev1.ResourceList, r corev1.ResourceName) error {
	v, ok := ann[name]
	if !ok {
		return nil
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return annotationError(name, v, "not a quantity (like 100m or 64Mi)")
	}
	if q.Sign() <= 0 {
		return annotationError(name, v, "must be more than zero")
	}
	if *list == nil {
		*list = corev1.ResourceList{}
	}
	(*list)[r] = q
	return nil
}

// checkRequestsWithinLimits refuses what the API server would refuse
// later with a message about a container the user did not write.
func checkRequestsWithinLimits(r corev1.ResourceRequirements) error {
	for name, req := range r.Requests {
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			return fmt.Errorf("sidecar %s request %s is above its limit %s (annotations sidecar.pillion.io/proxy-%s and proxy-%s-limit, or the injector config)",
				name, req.String(), lim.String(), name, name)
		}
	}
	return nil
}

func checkSecretName(field, name string) error {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("%s: %q: not a Secret name: %s", field, name, strings.Join(errs, "; "))
	}
	return nil
}
