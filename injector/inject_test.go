package injector

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func testConfig(t testing.TB) *Config { return loadTestConfig(t, "config.yaml") }

func newPod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
	}
}

// TestDecide: who asked wins in the documented order; the pod's word wins
// over its namespace's.
func TestDecide(t *testing.T) {
	cfg := testConfig(t)
	for _, c := range []struct {
		name      string
		ann       map[string]string
		ns        Namespace
		hostNet   bool
		wantSkip  Skip
		injected  bool
		wantError string
	}{
		{name: "namespace asked", ns: Namespace{"shop", true}, injected: true},
		{name: "pod asked, namespace did not", ann: map[string]string{InjectAnnotation: "enabled"}, ns: Namespace{"shop", false}, injected: true},
		{name: "pod opted out of an enabled namespace", ann: map[string]string{InjectAnnotation: "disabled"}, ns: Namespace{"shop", true}, wantSkip: SkipOptedOut},
		{name: "nobody asked", ns: Namespace{"shop", false}, wantSkip: SkipNotAsked},
		{name: "kube-system, even when asked", ann: map[string]string{InjectAnnotation: "enabled"}, ns: Namespace{"kube-system", true}, wantSkip: SkipExcludedNamespace},
		{name: "configured exclusion", ns: Namespace{"pillion-system", true}, wantSkip: SkipExcludedNamespace},
		{name: "host network", ns: Namespace{"shop", true}, hostNet: true, wantSkip: SkipHostNetwork},
		{name: "already injected", ann: map[string]string{StatusAnnotation: "{}", InjectAnnotation: "bogus"}, ns: Namespace{"shop", true}, wantSkip: SkipAlreadyInjected},
		{name: "bad value", ann: map[string]string{InjectAnnotation: "yes"}, ns: Namespace{"shop", true},
			wantError: `injector: annotation pillion.io/inject: "yes": want "enabled" or "disabled"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := newPod(c.ann)
			pod.Spec.HostNetwork = c.hostNet
			orig := pod.DeepCopy()
			res, err := Inject(pod, c.ns, cfg)
			if c.wantError != "" {
				if err == nil || err.Error() != c.wantError {
					t.Fatalf("error %v, want %q", err, c.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Skipped != c.wantSkip || (res.Pod != nil) != c.injected {
				t.Errorf("skipped %q, injected %v; want %q, %v", res.Skipped, res.Pod != nil, c.wantSkip, c.injected)
			}
			if diff := cmp.Diff(orig, pod); diff != "" {
				t.Errorf("Inject changed its argument:\n%s", diff)
			}
		})
	}
}

// TestBadAnnotations: each bad annotation is refused with a message naming
// it and the reason, all of them at once.
func TestBadAnnotations(t *testing.T) {
	cfg := testConfig(t)
	for _, c := range []struct {
		ann  map[string]string
		want string
	}{
		{map[string]string{ExcludeInboundPortsAnnotation: "80,http"},
			`annotation traffic.pillion.io/exclude-inbound-ports: "80,http": "http" is not a port number (1-65535)`},
		{map[string]string{ExcludeOutboundPortsAnnotation: "70000"},
			`annotation traffic.pillion.io/exclude-outbound-ports: "70000": "70000" is not a port number (1-65535)`},
		{map[string]string{ExcludeOutboundIPRangesAnnotation: "10.0.0.0/33"},
			`annotation traffic.pillion.io/exclude-outbound-ip-ranges: "10.0.0.0/33": `},
		{map[string]string{IncludeInboundPortsAnnotation: "8080", ExcludeInboundPortsAnnotation: "9090"},
			`annotation traffic.pillion.io/exclude-inbound-ports: "9090": conflicts with the traffic.pillion.io/include-inbound-ports list "8080"`},
		{map[string]string{IncludeInboundPortsAnnotation: "15021"},
			`annotation traffic.pillion.io/include-inbound-ports: "15021": 15021 is the sidecar's health port and is never captured`},
		{map[string]string{NativeAnnotation: "yes"}, `annotation sidecar.pillion.io/native: "yes": want "true" or "false"`},
		{map[string]string{RewriteProbesAnnotation: "0"}, `annotation sidecar.pillion.io/rewrite-app-probes: "0": want "true" or "false"`},
		{map[string]string{LogLevelAnnotation: "trace"}, `annotation sidecar.pillion.io/log-level: "trace": want debug, info, warn or error`},
		{map[string]string{ProxyCPUAnnotation: "lots"}, `annotation sidecar.pillion.io/proxy-cpu: "lots": not a quantity (like 100m or 64Mi)`},
		{map[string]string{ProxyMemoryLimitAnnotation: "-1Mi"}, `annotation sidecar.pillion.io/proxy-memory-limit: "-1Mi": must be more than zero`},
		{map[string]string{ProxyMemoryAnnotation: "1Gi"}, `sidecar memory request 1Gi is above its limit 256Mi`},
		{map[string]string{ProxyConfigAnnotation: "mesh: {mode: LOOSE}"}, `annotation sidecar.pillion.io/proxy-config: mesh.mode`},
		{map[string]string{ExcludeInboundPortsAnnotation: "x", NativeAnnotation: "no"},
			"annotation sidecar.pillion.io/native: \"no\": want \"true\" or \"false\"\nannotation traffic.pillion.io/exclude-inbound-ports: \"x\": \"x\" is not a port number (1-65535)"},
	} {
		_, err := Inject(newPod(c.ann), Namespace{"shop", true}, cfg)
		if err == nil || !strings.HasPrefix(err.Error(), "injector: "+c.want) {
			t.Errorf("%v:\n got %v\nwant injector: %s…", c.ann, err, c.want)
		}
	}
}

func TestReservedNames(t *testing.T) {
	cfg := testConfig(t)
	pod := newPod(nil)
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: ProxyName, Image: "x"})
	pod.Spec.Volumes = []corev1.Volume{{Name: ConfigVolumeName}}
	_, err := Inject(pod, Namespace{"shop", true}, cfg)
	want := `injector: container "pillion-proxy": the name is reserved for the pillion sidecar; rename it, or annotate the pod pillion.io/inject: "disabled"` +
		"\n" + `volume "pillion-config": the name is reserved for the pillion sidecar`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestContainersAreLeastPrivilege checks the security contexts the issue
// names, in both sidecar modes.
func TestContainersAreLeastPrivilege(t *testing.T) {
	cfg := testConfig(t)
	for _, native := range []string{"true", "false"} {
		res, err := Inject(newPod(map[string]string{NativeAnnotation: native}), Namespace{"shop", true}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var initC, proxyC *corev1.Container
		for _, list := range [][]corev1.Container{res.Pod.Spec.InitContainers, res.Pod.Spec.Containers} {
			for i := range list {
				switch list[i].Name {
				case InitName:
					initC = &list[i]
				case ProxyName:
					proxyC = &list[i]
				}
			}
		}
		if initC == nil || proxyC == nil {
			t.Fatalf("native=%s: init %v, proxy %v", native, initC != nil, proxyC != nil)
		}
		ic := initC.SecurityContext.Capabilities
		if !slices.Equal(ic.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(ic.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("native=%s: init capabilities %+v, want add NET_ADMIN NET_RAW, drop ALL", native, ic)
		}
		ps := proxyC.SecurityContext
		if *ps.RunAsUser != 1337 || *ps.RunAsGroup != 1337 || !*ps.RunAsNonRoot || !*ps.ReadOnlyRootFilesystem ||
			*ps.AllowPrivilegeEscalation || len(ps.Capabilities.Add) != 0 || !slices.Equal(ps.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("native=%s: proxy security context %+v", native, ps)
		}
		ports := map[int32]bool{}
		for _, p := range proxyC.Ports {
			ports[p.ContainerPort] = true
		}
		if !ports[15021] || !ports[15090] {
			t.Errorf("native=%s: proxy ports %+v, want 15021 and 15090 declared", native, proxyC.Ports)
		}
		if rp := proxyC.ReadinessProbe; rp == nil || rp.HTTPGet.Path != "/healthz/ready" || rp.HTTPGet.Port.IntVal != 15021 {
			t.Errorf("native=%s: readiness %+v", native, rp)
		}
		isNative := proxyC.RestartPolicy != nil && *proxyC.RestartPolicy == corev1.ContainerRestartPolicyAlways
		if isNative != (native == "true") || isNative != (proxyC.StartupProbe != nil) || isNative == (proxyC.Lifecycle != nil) {
			t.Errorf("native=%s: restartPolicy %v, startup probe %v, postStart %v", native, proxyC.RestartPolicy, proxyC.StartupProbe != nil, proxyC.Lifecycle != nil)
		}
		var st Status
		if err := json.Unmarshal([]byte(res.Pod.Annotations[StatusAnnotation]), &st); err != nil || st.Native != isNative {
			t.Errorf("native=%s: status %q: %v", native, res.Pod.Annotations[StatusAnnotation], err)
		}
	}
}

// TestProbeRewrite: the probes point at the health port, and the sidecar
// gets the originals, each resolvable.
func TestProbeRewrite(t *testing.T) {
	cfg := testConfig(t)
	pod := newPod(nil)
	c := &pod.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}}
	c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	res, err := Inject(pod, Namespace{"shop", true}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	app := res.Pod.Spec.Containers[0]
	if g := app.ReadinessProbe.HTTPGet; g == nil || g.Path != "/app-health/web/readyz" || g.Port.IntVal != 15021 {
		t.Errorf("readiness not rewritten: %+v", app.ReadinessProbe)
	}
	if app.LivenessProbe.Exec == nil {
		t.Errorf("exec probe changed: %+v", app.LivenessProbe)
	}
	var env string
	for _, e := range res.Pod.Spec.InitContainers[1].Env {
		if e.Name == "PILLION_APP_PROBES" {
			env = e.Value
		}
	}
	if want := `{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}`; env != want {
		t.Errorf("PILLION_APP_PROBES %s, want %s", env, want)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{`identity: {csi: {}}`, "image: required"},
		{"image: x\nidentity: {csi: {}, secret: {name: s}}", "identity: set exactly one of csi, hostPath and secret"},
		{"image: x\nidentity: {}", "identity: set exactly one"},
		{"image: x\nidentity: {hostPath: {path: run/spire}}", `identity.hostPath.path: "run/spire": want an absolute path on the node`},
		{"image: x\nidentity: {csi: {socket: a/b}}", `identity.csi.socket: "a/b": want a file name in the mounted folder`},
		{"image: x\nidentity: {secret: {name: Bad_Name}}", `identity.secret.name: "Bad_Name": not a Secret name`},
		{"image: x\nimagePullPolicy: Sometimes\nidentity: {csi: {}}", `imagePullPolicy: "Sometimes": want Always, IfNotPresent or Never`},
		{"image: x\nidentity: {csi: {}}\nproxy: {logLevel: loud}", `proxy.logLevel: "loud": want debug, info, warn or error`},
		{"image: x\nidentity: {csi: {}}\nproxy: {config: 'mesh: {mode: X}'}", "proxy.config: mesh.mode"},
		{"image: x\nidentity: {csi: {}}\nsidecar: {}", `unknown field "sidecar"`},
	} {
		_, err := ParseConfig([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want …%s…", c.yaml, err, c.want)
		}
	}
	cfg, err := ParseConfig([]byte("image: x\nidentity: {csi: {}}\nexcludeNamespaces: [b, a]"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "kube-system"}; !slices.Equal(cfg.ExcludeNamespaces, want) || !cfg.NativeSidecars || !cfg.RewriteAppProbes ||
		cfg.Identity.CSI.Driver != "csi.spiffe.io" || cfg.Identity.CSI.Socket != "spire-agent.sock" {
		t.Errorf("defaults not filled: %+v", cfg)
	}
}
