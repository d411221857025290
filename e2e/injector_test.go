package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// runningInjector is `pillion injector` on this machine, registered with
// the API server by URL (there is no kube-proxy for a Service).
type runningInjector struct {
	proc              *testpod.Process
	base, metricsBase string
	certDir           string
	configPath        string
}

// freePort returns a port nothing listens on right now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startInjector starts the real injector with configYAML and registers it
// with deploy/base/webhook.yaml: the same two entries, selectors and
// failure policies, pointed at its URL.
func startInjector(t *testing.T, env *kubetest.Env, configYAML string) *runningInjector {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(configYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	ca := kubetest.WriteServingCert(t, dir)
	port, mport := freePort(t), freePort(t)
	inj := &runningInjector{
		base:        fmt.Sprintf("https://127.0.0.1:%d", port),
		metricsBase: fmt.Sprintf("http://127.0.0.1:%d", mport),
		certDir:     dir,
		configPath:  cfgPath,
	}
	inj.proc = testpod.StartOnNode(t, controlBin, "injector", "--address=127.0.0.1",
		fmt.Sprint("--port=", port), fmt.Sprint("--metrics-port=", mport), "--config="+cfgPath,
		"--tls-cert="+filepath.Join(dir, "tls.crt"), "--tls-key="+filepath.Join(dir, "tls.key"))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if resp, err := http.Get(inj.metricsBase + "/healthz/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-inj.proc.Done():
			t.Fatalf("injector exited: %v\n%s", inj.proc.Wait(), inj.proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("injector not ready in 15s:\n%s", inj.proc.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	inj.register(t, env, ca)
	return inj
}

// register applies deploy/base/webhook.yaml with each entry's Service
// replaced by the injector's URL and caBundle.
func (inj *runningInjector) register(t *testing.T, env *kubetest.Env, ca []byte) {
	t.Helper()
	root, err := meshtest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "base", "webhook.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs := kubetest.Decode(t, data)
	if len(objs) != 1 {
		t.Fatalf("deploy/base/webhook.yaml holds %d objects, want 1", len(objs))
	}
	var mwc admissionregv1.MutatingWebhookConfiguration
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(objs[0].Object, &mwc); err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		cc := &mwc.Webhooks[i].ClientConfig
		url := inj.base + *cc.Service.Path
		cc.Service, cc.URL, cc.CABundle = nil, &url, ca
	}
	ctx := context.Background()
	if old, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{}); err == nil {
		mwc.ResourceVersion = old.ResourceVersion
		_, err = env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, &mwc, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// metric returns the injector's value of one Prometheus series, such as
// `pillion_injector_reviews_total{reason="",result="injected"}`.
func (inj *runningInjector) metric(t *testing.T, series string) string {
	t.Helper()
	resp, err := http.Get(inj.metricsBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// servedSerial is the serial number of the certificate the injector
// presents now.
func (inj *runningInjector) servedSerial(t *testing.T) string {
	t.Helper()
	c, err := tls.Dial("tcp", strings.TrimPrefix(inj.base, "https://"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func createNamespace(t *testing.T, env *kubetest.Env, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := env.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func appPod(name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "example.com/web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8081}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromString("http"),
			}}},
		}}},
	}
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// injectorTestConfig is the injector config of these tests: the sidecar
// config puts the pods named in networks in the mesh, STRICT.
func injectorTestConfig(networks string) string {
	return `image: ghcr.io/pillionmesh/pillion:e2e
identity:
  csi: {}
proxy:
  config: |
    mesh:
      networks: ` + networks + `
      mode: STRICT
`
}

// TestInjectorWithAPIServer runs a real kube-apiserver and etcd and the
// real `pillion injector`, registered as deploy/ registers it, and creates
// pods: the API server stores what the webhook decided. Without a kubelet
// pods stay Pending; the last subtest runs the stored pod's init container
// and sidecar in a test pod, as a kubelet would, and checks that capture
// and the exclusions behave as its annotations asked.
func TestInjectorWithAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx := context.Background()
	createNamespace(t, env, "shop", map[string]string{injector.InjectLabel: "enabled"})
	createNamespace(t, env, "plain", nil)

	// The pods of the last subtest; their addresses go into the mesh
	// config and the annotations, so they exist first (as root only).
	var node *testpod.Node
	var podA, podC, podD *testpod.Pod
	networks := meshtest.MeshNetworks
	excludedRanges := "192.0.2.7/32"
	if os.Geteuid() == 0 {
		node = testpod.NewNode(t)
		podA, podC, podD = node.AddPod(t, "a"), node.AddPod(t, "c"), node.AddPod(t, "d")
		networks = fmt.Sprintf("[%s/32, %s/128]", podA.IPv4, podA.IPv6)
		excludedRanges = fmt.Sprintf("%s/32,%s/128", podD.IPv4, podD.IPv6)
	}
	inj := startInjector(t, env, injectorTestConfig(networks))
	pods := func(ns string) interface {
		Create(context.Context, *corev1.Pod, metav1.CreateOptions) (*corev1.Pod, error)
	} {
		return env.Client.CoreV1().Pods(ns)
	}

	var stored *corev1.Pod
	t.Run("pod in a labelled namespace is injected with its exclusions", func(t *testing.T) {
		pod := appPod("web", map[string]string{
			injector.ExcludeInboundPortsAnnotation:     "9002",
			injector.ExcludeOutboundPortsAnnotation:    "9001",
			injector.ExcludeOutboundIPRangesAnnotation: excludedRanges,
		})
		got, err := pods("shop").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stored = got
		if names := containerNames(got.Spec.InitContainers); !slices.Equal(names, []string{"pillion-init", "pillion-proxy"}) {
			t.Fatalf("init containers %v, want pillion-init, pillion-proxy\n%s", names, inj.proc.Output())
		}
		initArgs := got.Spec.InitContainers[0].Args
		want := []string{"init", "--exclude-inbound-ports=9002", "--exclude-outbound-ports=9001", "--exclude-outbound-ip-ranges=" + excludedRanges}
		if !slices.Equal(initArgs, want) {
			t.Errorf("init args %q, want %q", initArgs, want)
		}
		proxy := got.Spec.InitContainers[1]
		if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways || proxy.Image != "ghcr.io/pillionmesh/pillion:e2e" {
			t.Errorf("sidecar stored as %+v", proxy)
		}
		if g := got.Spec.Containers[0].ReadinessProbe.HTTPGet; g.Path != "/app-health/web/readyz" || g.Port.IntValue() != 15021 {
			t.Errorf("app probe stored as %+v, want through the sidecar's health port", g)
		}
		if got.Annotations[injector.StatusAnnotation] == "" {
			t.Error("no pillion.io/status annotation")
		}
	})

	t.Run("opted-out pod is stored untouched", func(t *testing.T) {
		got, err := pods("shop").Create(ctx, appPod("out", map[string]string{injector.InjectAnnotation: "disabled"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.InitContainers) != 0 || !slices.Equal(containerNames(got.Spec.Containers), []string{"web"}) ||
			got.Annotations[injector.StatusAnnotation] != "" || got.Spec.Containers[0].ReadinessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("opted-out pod changed: init %v, containers %v, annotations %v",
				containerNames(got.Spec.InitContainers), containerNames(got.Spec.Containers), got.Annotations)
		}
	})

	t.Run("unlabelled namespace: only the pod that asks", func(t *testing.T) {
		plain, err := pods("plain").Create(ctx, appPod("quiet", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(plain.Spec.InitContainers) != 0 {
			t.Errorf("a pod that did not ask was injected: %v", containerNames(plain.Spec.InitContainers))
		}
		asked, err := pods("plain").Create(ctx, appPod("asks", map[string]string{injector.InjectAnnotation: "enabled"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if findContainer(asked, injector.ProxyName) == nil {
			t.Errorf("a pod that asked was not injected: %v", containerNames(asked.Spec.InitContainers))
		}
	})

	t.Run("bad annotation is refused with the reason", func(t *testing.T) {
		_, err := pods("shop").Create(ctx, appPod("bad", map[string]string{injector.ExcludeInboundPortsAnnotation: "8080,http"}), metav1.CreateOptions{})
		want := `admission webhook "namespace.inject.pillion.io" denied the request: pillion sidecar injection: annotation traffic.pillion.io/exclude-inbound-ports: "8080,http": "http" is not a port number (1-65535)`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v\nwant …%s", err, want)
		}
		if _, err := env.Client.CoreV1().Pods("shop").Get(ctx, "bad", metav1.GetOptions{}); err == nil {
			t.Error("the refused pod was stored")
		}
		pod := appPod("clash", nil)
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "pillion-proxy", Image: "mine:1"})
		_, err = pods("shop").Create(ctx, pod, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `container "pillion-proxy": the name is reserved for the pillion sidecar`) {
			t.Errorf("pod with a container named like the sidecar: %v", err)
		}
	})

	t.Run("metrics count the decisions", func(t *testing.T) {
		for series, atLeast := range map[string]int{
			`pillion_injector_reviews_total{reason="",result="injected"}`:         2,
			`pillion_injector_reviews_total{reason="",result="denied"}`:           2,
			`pillion_injector_reviews_total{reason="opted_out",result="skipped"}`: 1,
			`pillion_injector_reviews_total{reason="not_asked",result="skipped"}`: 1,
		} {
			var n int
			if _, err := fmt.Sscan(inj.metric(t, series), &n); err != nil || n < atLeast {
				t.Errorf("%s = %q, want at least %d", series, inj.metric(t, series), atLeast)
			}
		}
	})

	t.Run("serving certificate rotates without a restart", func(t *testing.T) {
		before := inj.servedSerial(t)
		ca := kubetest.WriteServingCert(t, inj.certDir)
		inj.register(t, env, ca) // the new CA in caBundle, as cert-manager's cainjector would
		deadline := time.Now().Add(10 * time.Second)
		for inj.servedSerial(t) == before {
			if time.Now().After(deadline) {
				t.Fatalf("still serving the old certificate after 10s:\n%s", inj.proc.Output())
			}
			time.Sleep(200 * time.Millisecond)
		}
		got, err := pods("shop").Create(ctx, appPod("after-rotation", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if findContainer(got, injector.ProxyName) == nil {
			t.Error("not injected after the certificate rotated")
		}
		select {
		case <-inj.proc.Done():
			t.Fatal("the injector exited")
		default:
		}
	})

	t.Run("config changes reach new pods without a restart; a bad one is refused", func(t *testing.T) {
		good := strings.Replace(injectorTestConfig(networks), ":e2e", ":e2e-next", 1)
		bad := good + "surprise: true\n"
		for _, c := range []struct{ content, wantImage, wantLog string }{
			{bad, "ghcr.io/pillionmesh/pillion:e2e", "refusing the changed injector config"},
			{good, "ghcr.io/pillionmesh/pillion:e2e-next", "injector config reloaded"},
		} {
			if err := os.WriteFile(inj.configPath+".tmp", []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(inj.configPath+".tmp", inj.configPath); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(inj.proc.Output(), c.wantLog) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q in 10s:\n%s", c.wantLog, inj.proc.Output())
				}
				time.Sleep(100 * time.Millisecond)
			}
			pod := appPod("", nil)
			pod.GenerateName = "reload-"
			got, err := pods("shop").Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if proxy := findContainer(got, injector.ProxyName); proxy == nil || proxy.Image != c.wantImage {
				t.Errorf("after %q: sidecar %+v, want image %s", c.wantLog, proxy, c.wantImage)
			}
		}
	})

	t.Run("the stored pod runs as its annotations asked", func(t *testing.T) {
		if node == nil {
			privileged.Require(t, "ip", "iptables", "ip6tables", "setpriv")
		}
		runStoredPod(t, stored, podA, podC, podD)
	})
}
