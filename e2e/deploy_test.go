package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/kubetest"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
)

// TestDeployManifests renders both overlays of deploy/ with kustomize and
// server-side applies every object to a real API server (with
// cert-manager's CRDs) as a dry run: the API server validates each against
// its schema and admission. It also checks that what the manifests hand
// the injector is what the injector takes: its config and its flags.
func TestDeployManifests(t *testing.T) {
	root, err := meshtest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := kubetest.Start(t, kubetest.CertManagerCRDs(t))
	overlays := map[string][]*unstructured.Unstructured{
		"cert-manager": kubetest.Decode(t, kubetest.Kustomize(t, filepath.Join(root, "deploy", "cert-manager"))),
		"self-signed":  selfSigned(t, root),
	}
	ctx := context.Background()
	for name, objs := range overlays {
		t.Run(name, func(t *testing.T) {
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.GetKind())
				// The namespace is created for real: the namespaced
				// objects' dry runs need it to exist.
				if _, err := env.Apply(ctx, o, o.GetKind() != "Namespace"); err != nil {
					t.Errorf("server-side apply (dry run): %v", err)
				}
			}
			for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "MutatingWebhookConfiguration",
				"ClusterRole", "ClusterRoleBinding"} {
				if !slices.Contains(kinds, k) {
					t.Errorf("no %s among %v", k, kinds)
				}
			}
			checkInjectorObjects(t, objs, name == "self-signed")
		})
	}
}

// selfSigned renders deploy/self-signed in a copy of deploy/, after its
// gen-certs.sh wrote the certificates there.
func selfSigned(t *testing.T, root string) []*unstructured.Unstructured {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		msg := "deploy/self-signed/gen-certs.sh needs openssl"
		if privileged.InCI() {
			t.Fatal(msg + " (CI=true: failing instead of skipping)")
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", filepath.Join(root, "deploy"), dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	copyDir := filepath.Join(dir, "deploy")
	os.RemoveAll(filepath.Join(copyDir, "self-signed", "certs")) // a developer's own
	if out, err := exec.Command("bash", filepath.Join(copyDir, "self-signed", "gen-certs.sh")).CombinedOutput(); err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, out)
	}
	return kubetest.Decode(t, kubetest.Kustomize(t, filepath.Join(copyDir, "self-signed")))
}

// deploymentCommands are the Deployments deploy/ installs and the
// subcommand each runs.
var deploymentCommands = map[string]string{
	"pillion-injector":  "injector",
	"pillion-discovery": "discovery",
}

// checkDeployment checks that a Deployment runs two replicas of the
// subcommand it is for, with flags that subcommand takes.
func checkDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	// Two each: the injector's namespace webhook fails closed; sidecars
	// learn nothing new while discovery is away.
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("Deployment %s: %v replicas, want 2", d.Name, d.Spec.Replicas)
	}
	sub, ok := deploymentCommands[d.Name]
	if !ok {
		t.Errorf("Deployment %s: not one of %v", d.Name, deploymentCommands)
		return
	}
	c := d.Spec.Template.Spec.Containers[0]
	if !strings.HasPrefix(c.Image, "ghcr.io/pillionmesh/pillion:") {
		t.Errorf("Deployment %s: image %q, want the control image (ghcr.io/pillionmesh/pillion; the proxy image lacks %s)", d.Name, c.Image, sub)
	}
	if len(c.Args) == 0 || c.Args[0] != sub {
		t.Errorf("Deployment %s: args %q, want the %s subcommand", d.Name, c.Args, sub)
		return
	}
	help, err := exec.Command(controlBin, sub, "--help").Output()
	if err != nil {
		t.Fatalf("pillion %s --help: %v", sub, err)
	}
	for _, a := range c.Args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.Contains(string(help), "  -"+name+" ") && !strings.Contains(string(help), "  -"+name+"\n") {
			t.Errorf("Deployment %s: flag %q is not one of pillion %s's", d.Name, a, sub)
		}
	}
}

// checkInjectorObjects checks the objects against the injector and
// discovery themselves.
func checkInjectorObjects(t *testing.T, objs []*unstructured.Unstructured, wantCABundle bool) {
	t.Helper()
	for _, o := range objs {
		switch o.GetKind() {
		case "ConfigMap":
			var cm corev1.ConfigMap
			convert(t, o, &cm)
			if _, err := injector.ParseConfig([]byte(cm.Data["config.yaml"])); err != nil {
				t.Errorf("ConfigMap %s: the injector refuses its config.yaml: %v", cm.Name, err)
			}
		case "Deployment":
			var d appsv1.Deployment
			convert(t, o, &d)
			checkDeployment(t, &d)
		case "MutatingWebhookConfiguration":
			var mwc admissionregv1.MutatingWebhookConfiguration
			convert(t, o, &mwc)
			var paths []string
			for _, w := range mwc.Webhooks {
				paths = append(paths, *w.ClientConfig.Service.Path)
				if wantCABundle && len(w.ClientConfig.CABundle) == 0 {
					t.Errorf("webhook %s: no caBundle", w.Name)
				}
			}
			if want := []string{injector.NamespacePath, injector.PodPath}; !slices.Equal(paths, want) {
				t.Errorf("webhook paths %v, want %v", paths, want)
			}
		}
	}
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}
