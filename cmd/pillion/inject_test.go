//go:build !lean

package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// injectTestConfig is the injector config the golden tests use.
const injectTestConfig = "../../injector/testdata/inject/config.yaml"

const (
	webDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - {name: http, containerPort: 8080}
`
	webService = `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: http}
`
	optedOutPod = `apiVersion: v1
kind: Pod
metadata:
  name: x
  namespace: shop
  annotations:
    pillion.io/inject: disabled
spec:
  containers:
  - {name: x, image: busybox:1.36}
`
	plainPod = `apiVersion: v1
kind: Pod
metadata:
  name: x
  namespace: shop
spec:
  containers:
  - {name: x, image: busybox:1.36}
`
	badAnnotationPod = `apiVersion: v1
kind: Pod
metadata:
  name: x
  namespace: shop
  annotations:
    traffic.pillion.io/exclude-inbound-ports: "http"
spec:
  containers:
  - {name: x, image: busybox:1.36}
`
)

// writeFile writes content to name in a new temporary folder and returns
// its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// yamlDocs splits a multi-document YAML stream into its documents, as
// written (without the --- separators).
func yamlDocs(t *testing.T, s string) []string {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(s)))
	var docs []string
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("output is not YAML: %v\n%s", err, s)
		}
		docs = append(docs, string(doc))
	}
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func volumeNames(vs []corev1.Volume) []string {
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
	}
	return names
}

// checkInjectedPodSpec checks that spec has the init container and the
// native sidecar, both running image, the app's containers and the
// volumes.
func checkInjectedPodSpec(t *testing.T, spec corev1.PodSpec, image string, app, volumes []string) {
	t.Helper()
	if diff := cmp.Diff([]string{"pillion-init", "pillion-proxy"}, containerNames(spec.InitContainers)); diff != "" {
		t.Errorf("initContainers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(app, containerNames(spec.Containers)); diff != "" {
		t.Errorf("containers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(volumes, volumeNames(spec.Volumes)); diff != "" {
		t.Errorf("volumes (-want +got):\n%s", diff)
	}
	for _, c := range spec.InitContainers {
		if c.Image != image {
			t.Errorf("%s runs %q, want %q", c.Name, c.Image, image)
		}
	}
}

func TestInject(t *testing.T) {
	for _, tt := range []struct {
		name   string
		input  string
		code   int
		stderr string // whole; "FILE" stands for the input's path
		check  func(t *testing.T, stdout string)
	}{
		{
			name:   "deployment and service",
			input:  webDeployment + "---\n" + webService,
			stderr: "injected Deployment shop/web\n",
			check: func(t *testing.T, stdout string) {
				docs := yamlDocs(t, stdout)
				if len(docs) != 2 {
					t.Fatalf("%d documents, want 2:\n%s", len(docs), stdout)
				}
				var d appsv1.Deployment
				if err := yaml.UnmarshalStrict([]byte(docs[0]), &d); err != nil {
					t.Fatalf("first document: %v\n%s", err, docs[0])
				}
				if d.Kind != "Deployment" || d.Namespace != "shop" || d.Name != "web" {
					t.Errorf("first document is %s %s/%s, want Deployment shop/web", d.Kind, d.Namespace, d.Name)
				}
				checkInjectedPodSpec(t, d.Spec.Template.Spec, "ghcr.io/pillionmesh/pillion:test",
					[]string{"web"}, []string{"pillion-identity", "pillion-config"})
				if _, ok := d.Spec.Template.Annotations["pillion.io/status"]; !ok {
					t.Errorf("template annotations %v lack pillion.io/status", d.Spec.Template.Annotations)
				}
				if d.Spec.Selector == nil || d.Spec.Selector.MatchLabels["app"] != "web" {
					t.Errorf("selector %v, want the input's app=web", d.Spec.Selector)
				}
				if docs[1] != webService {
					t.Errorf("the Service changed:\n%s\nwant\n%s", docs[1], webService)
				}
			},
		},
		{
			name:   "opted out",
			input:  optedOutPod,
			stderr: "skipped Pod shop/x: opted_out\n",
			check: func(t *testing.T, stdout string) {
				if stdout != optedOutPod {
					t.Errorf("stdout =\n%s\nwant the input\n%s", stdout, optedOutPod)
				}
			},
		},
		{
			name:   "bad annotation writes nothing",
			input:  webService + "---\n" + badAnnotationPod,
			code:   1,
			stderr: `pillion inject: FILE: injector: document 2 (Pod shop/x): annotation traffic.pillion.io/exclude-inbound-ports: "http": "http" is not a port number (1-65535)` + "\n",
			check: func(t *testing.T, stdout string) {
				if stdout != "" {
					t.Errorf("stdout = %q, want nothing", stdout)
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := writeFile(t, "manifest.yaml", tt.input)
			code, stdout, stderr := runCmd("inject", "-f", file, "--config", injectTestConfig)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			if want := strings.ReplaceAll(tt.stderr, "FILE", file); stderr != want {
				t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
			}
			tt.check(t, stdout)
		})
	}
}

// TestInjectIdempotent: injecting the output again changes nothing, and
// says why.
func TestInjectIdempotent(t *testing.T) {
	file := writeFile(t, "manifest.yaml", webDeployment+"---\n"+webService)
	code, once, stderr := runCmd("inject", "-f", file, "--config", injectTestConfig)
	if code != 0 || stderr != "injected Deployment shop/web\n" {
		t.Fatalf("first run: exit %d, stderr %q", code, stderr)
	}
	again := writeFile(t, "injected.yaml", once)
	code, twice, stderr := runCmd("inject", "-f", again, "--config", injectTestConfig)
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	if want := "skipped Deployment shop/web: already_injected\n"; stderr != want {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}
	if diff := cmp.Diff(once, twice); diff != "" {
		t.Errorf("injecting twice changed the output (-once +twice):\n%s", diff)
	}
}

// TestInjectDefaultConfig: without --config, the image is this version's
// and the identity comes from the SPIFFE CSI driver.
func TestInjectDefaultConfig(t *testing.T) {
	old := version
	version = "v1.2.3-test"
	t.Cleanup(func() { version = old })
	file := writeFile(t, "pod.yaml", plainPod)
	code, stdout, stderr := runCmd("inject", "-f", file)
	if code != 0 || stderr != "injected Pod shop/x\n" {
		t.Fatalf("exit %d, stderr %q; want 0 and %q", code, stderr, "injected Pod shop/x\n")
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict([]byte(stdout), &pod); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	// No proxy config by default: no volume for it.
	checkInjectedPodSpec(t, pod.Spec, "ghcr.io/pillionmesh/pillion-proxy:v1.2.3-test", []string{"x"}, []string{"pillion-identity"})
	for _, v := range pod.Spec.Volumes {
		if v.Name != "pillion-identity" {
			continue
		}
		if v.CSI == nil || v.CSI.Driver != "csi.spiffe.io" {
			t.Errorf("identity volume %+v, want the CSI driver csi.spiffe.io", v.VolumeSource)
		}
	}
}

// TestInjectBadUsage: each bad use exits 2 with one line naming the flag,
// and writes nothing to stdout.
func TestInjectBadUsage(t *testing.T) {
	manifest := writeFile(t, "manifest.yaml", plainPod)
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	noImage := writeFile(t, "config.yaml", "identity: {csi: {}}\n")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no -f", nil, "pillion inject: -f: required: a manifest file, or - for standard input"},
		{"missing file", []string{"-f", missing}, "pillion inject: -f: open " + missing + ": no such file or directory"},
		{"config without image", []string{"-f", manifest, "--config", noImage},
			"pillion inject: --config: injector: " + noImage + ": image: required: the image the init container and the sidecar run"},
		{"extra argument", []string{"-f", manifest, "more.yaml"}, `pillion inject: unexpected argument "more.yaml"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(append([]string{"inject"}, tt.args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if want := tt.want + "\nRun 'pillion inject --help' for usage.\n"; stderr != want {
				t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

func TestInjectHelp(t *testing.T) {
	code, stdout, stderr := runCmd("inject", "--help")
	if code != 0 || stderr != "" {
		t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
	}
	for _, want := range []string{"Usage: pillion inject [flags]", "\n  -f string\n", "- for standard input", "\n  -config string\n",
		"default: image ghcr.io/pillionmesh/pillion-proxy:" + version} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inject --help lacks %q:\n%s", want, stdout)
		}
	}
}

// TestInjectStdin runs the built binary, since `-f -` reads the process's
// own standard input: it writes what -f FILE does.
func TestInjectStdin(t *testing.T) {
	input := webDeployment + "---\n" + webService
	code, want, stderr := runCmd("inject", "-f", writeFile(t, "manifest.yaml", input), "--config", injectTestConfig)
	if code != 0 {
		t.Fatalf("-f FILE: exit %d: %s", code, stderr)
	}

	bin := filepath.Join(t.TempDir(), "pillion")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, "inject", "-f", "-", "--config", injectTestConfig)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(input), &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	if got := errOut.String(); got != "injected Deployment shop/web\n" {
		t.Errorf("stderr = %q, want %q", got, "injected Deployment shop/web\n")
	}
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("-f - differs from -f FILE (-file +stdin):\n%s", diff)
	}
}
