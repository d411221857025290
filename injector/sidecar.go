package injector

import (
	"path"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/appprobe"
	"github.com/pillionmesh/pillion/sidecar"
)

// Where the sidecar finds what the volumes hold.
const (
	identityMountPath = "/run/spiffe"
	svidMountPath     = "/etc/pillion/svid"
	configMountPath   = "/etc/pillion/proxy"
	configFileName    = "config.yaml"
)

// volumes returns the identity volume and, when the sidecar has a config,
// the downward API volume that shows it the config annotation as a file.
func volumes(cfg *Config, opts options) []corev1.Volume {
	id := corev1.Volume{Name: IdentityVolumeName}
	switch {
	case cfg.Identity.CSI != nil:
		id.CSI = &corev1.CSIVolumeSource{Driver: cfg.Identity.CSI.Driver, ReadOnly: ptr(true)}
	case cfg.Identity.HostPath != nil:
		id.HostPath = &corev1.HostPathVolumeSource{Path: cfg.Identity.HostPath.Path, Type: ptr(corev1.HostPathDirectory)}
	default:
		id.Secret = &corev1.SecretVolumeSource{SecretName: opts.svidSecret}
	}
	vols := []corev1.Volume{id}
	if opts.proxyConfig != "" {
		vols = append(vols, corev1.Volume{
			Name: ConfigVolumeName,
			VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
				Items: []corev1.DownwardAPIVolumeFile{{
					Path:     configFileName,
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + ProxyConfigAnnotation + "']"},
				}},
			}},
		})
	}
	return vols
}

// initContainer runs `pillion init` with the pod's exclusions. It needs
// root and NET_ADMIN and NET_RAW to write the pod's iptables rules, and
// nothing else.
func initContainer(cfg *Config, opts options) corev1.Container {
	return corev1.Container{
		Name:            InitName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            append([]string{"init"}, opts.initArgs...),
		Resources:       *opts.resources.DeepCopy(),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:    ptr(int64(0)),
			RunAsGroup:   ptr(int64(0)),
			RunAsNonRoot: ptr(false),
			Privileged:   ptr(false),
			// iptables takes its lock under /run.
			ReadOnlyRootFilesystem:   ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// proxyContainer is the sidecar: UID/GID 1337 (exempt from capture), no
// capabilities, read-only root, pointed at discovery unless the config
// turns it off.
func proxyContainer(cfg *Config, opts options, probes appProbes) corev1.Container {
	c := corev1.Container{
		Name:            ProxyName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            []string{"proxy", "--log-level=" + opts.logLevel},
		Ports: []corev1.ContainerPort{
			{Name: "pillion-health", ContainerPort: int32(sidecar.HealthPort), Protocol: corev1.ProtocolTCP},
			{Name: "pillion-prom", ContainerPort: int32(sidecar.PrometheusPort), Protocol: corev1.ProtocolTCP},
		},
		Resources:      *opts.resources.DeepCopy(),
		ReadinessProbe: readyProbe(2, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(sidecar.DefaultProxyUID)),
			RunAsGroup:               ptr(int64(sidecar.DefaultProxyGID)),
			RunAsNonRoot:             ptr(true),
			Privileged:               ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if cfg.DiscoveryAddress != "" {
		c.Args = append(c.Args, "--discovery-address="+cfg.DiscoveryAddress)
		if !cfg.DiscoveryID.IsZero() {
			c.Args = append(c.Args, "--discovery-id="+cfg.DiscoveryID.String())
		}
	}
	switch {
	case cfg.Identity.CSI != nil || cfg.Identity.HostPath != nil:
		socket := cfg.Identity.HostPath
		if cfg.Identity.CSI != nil {
			socket = cfg.Identity.CSI
		}
		c.Env = append(c.Env, corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix://" + path.Join(identityMountPath, socket.Socket)})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: IdentityVolumeName, MountPath: identityMountPath, ReadOnly: true})
	default:
		c.Args = append(c.Args,
			"--svid-cert="+path.Join(svidMountPath, "svid.pem"),
			"--svid-key="+path.Join(svidMountPath, "svid-key.pem"),
			"--svid-bundle="+path.Join(svidMountPath, "bundle.pem"))
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: IdentityVolumeName, MountPath: svidMountPath, ReadOnly: true})
	}
	if opts.proxyConfig != "" {
		c.Args = append(c.Args, "--config="+path.Join(configMountPath, configFileName))
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: ConfigVolumeName, MountPath: configMountPath, ReadOnly: true})
	}
	if len(probes) > 0 {
		// The sidecar runs the probes that name no host against the pod's
		// IP, as kubelet does: status.podIP, its primary IP, the one
		// kubelet uses also in a dual-stack pod.
		c.Env = append(c.Env,
			corev1.EnvVar{Name: appprobe.EnvVar, Value: probes.Encode()},
			corev1.EnvVar{Name: appprobe.PodIPEnvVar, ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"},
			}})
	}
	if limit, ok := memoryLimit(opts.resources); ok {
		c.Env = append(c.Env, corev1.EnvVar{Name: "GOMEMLIMIT", Value: limit})
	}
	if opts.native {
		// An init container that keeps running: started before the app's
		// containers once its startup probe passes, stopped after them,
		// so Jobs complete.
		c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
		c.StartupProbe = readyProbe(1, 600)
	} else {
		// kubelet starts the next container only when this hook returns.
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
			Exec: &corev1.ExecAction{Command: []string{"pillion", "wait", "--timeout=2m"}},
		}}
	}
	return c
}

// defaultGracePeriod is Kubernetes' terminationGracePeriodSeconds when a
// pod sets none.
const defaultGracePeriod = 30 * time.Second

// drainArgs are the sidecar's drain flags for a pod with the given
// terminationGracePeriodSeconds (nil: Kubernetes' default), none when the
// proxy's defaults are right:
//
//   - a native sidecar gets --drain-period=0s. kubelet sends it SIGTERM
//     only once the application's containers have exited: by then nothing
//     in the pod serves inbound connections nor makes outbound ones, and a
//     drain period would only delay the pod's end. Keeping the pod
//     reachable while its endpoint's removal spreads happens while the
//     application shuts down, with the sidecar still fully up; how long the
//     application itself accepts is its own business (a preStop sleep).
//   - a classic sidecar gets SIGTERM with the application, and must be done
//     within the grace period, or kubelet kills it mid-drain: when the
//     period and the time-out do not fit, they share the grace period, half
//     each, one second left for the exit.
func drainArgs(grace *int64, native bool) []string {
	if native {
		return []string{"--drain-period=0s"}
	}
	g := defaultGracePeriod
	if grace != nil {
		g = time.Duration(max(*grace, 0)) * time.Second
	}
	if g >= sidecar.DefaultDrainPeriod+sidecar.DefaultDrainTimeout+time.Second {
		return nil
	}
	period := g / 2
	timeout := max(g-period-time.Second, 0)
	return []string{"--drain-period=" + period.String(), "--drain-timeout=" + timeout.String()}
}

// goMemLimitPercent is the share of the sidecar's memory limit given to
// the Go runtime as its soft limit (GOMEMLIMIT): the rest is for what the
// cgroup charges and the runtime does not see — the kernel's socket
// buffers of every connection, above all. At the soft limit the garbage
// collector works harder instead of letting the heap reach the hard limit
// and the OOM killer. 90 % is automemlimit's default, the library most Go
// programs in containers use for the same.
const goMemLimitPercent = 90

// memoryLimit returns GOMEMLIMIT for a container with resources r: a bare
// byte count (which Go accepts), goMemLimitPercent of its memory limit;
// false without a limit (the Go runtime then has none either, as before).
// It is computed here rather than taken from the downward API
// (resourceFieldRef limits.memory), which can only divide the limit by a
// unit, not take a share of it, and gives the node's allocatable memory
// for a container without a limit.
func memoryLimit(r corev1.ResourceRequirements) (string, bool) {
	q, ok := r.Limits[corev1.ResourceMemory]
	if !ok || q.Sign() <= 0 {
		return "", false
	}
	return strconv.FormatInt(q.Value()*goMemLimitPercent/100, 10), true
}

func readyProbe(period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: sidecar.ReadyPath, Port: intstr.FromInt32(int32(sidecar.HealthPort)), Scheme: corev1.URISchemeHTTP,
		}},
		TimeoutSeconds:   3,
		PeriodSeconds:    period,
		SuccessThreshold: 1,
		FailureThreshold: failures,
	}
}

func ptr[T any](v T) *T { return &v }
