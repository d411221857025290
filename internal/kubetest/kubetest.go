// Package kubetest runs a real kube-apiserver and etcd for a test
// (controller-runtime's envtest, with binaries built from source by `make
// kube`), and applies manifests to it. There is no kubelet: pods stay
// Pending, but admission runs on every create. A test that needs
// EndpointSlices starts the real kube-controller-manager's EndpointSlice
// controllers (StartControllerManager) and plays the kubelet's part itself
// (CreateNode, RunPod, SetPodReady, DeletePod).
//
// Services get ClusterIPs from ServiceCIDR (198.19.0.0/20, part of the range
// set aside for benchmarking), never from a private range; the cluster is
// IPv4 only.
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/privileged"
)

// Versions the Makefile builds and downloads into the cache.
const (
	KubeVersion        = "v1.36.3"
	CertManagerVersion = "v1.19.1"
)

// ServiceCIDR is the API server's --service-cluster-ip-range: Services'
// ClusterIPs come from it. It lies in 198.18.0.0/15, apart from the test
// pods' 198.18.0.0/24, so that no test ever addresses a private range; its
// 4,094 addresses hold the 2,000 Services of BenchmarkDiscoveryScale.
const ServiceCIDR = "198.19.0.0/20"

// Env is a running API server. Its methods are safe for concurrent use.
type Env struct {
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	mapper  meta.ResettableRESTMapper

	te     *envtest.Environment
	assets string // the folder of the binaries

	mu        sync.Mutex
	admin     []byte // kubeconfig of the admin user, made by the first Kubeconfig
	firstNode string // the node RunPod puts a pod without spec.nodeName on
}

// Start starts etcd and kube-apiserver, with the CRDs in crdDirs
// installed and Services' ClusterIPs taken from ServiceCIDR, and stops them
// (the API server first) when t ends.
func Start(t testing.TB, crdDirs ...string) *Env {
	t.Helper()
	dir := assets(t)
	te := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: true,
	}
	te.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", ServiceCIDR)
	cfg, err := te.Start()
	if err != nil {
		t.Fatalf("kubetest: start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := te.Stop(); err != nil {
			t.Errorf("kubetest: stop: %v", err)
		}
	})
	e := &Env{Config: cfg, te: te, assets: dir}
	if e.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if e.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	e.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(e.Client.Discovery()))
	return e
}

// assets is the folder holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS, else .cache/kube-<KubeVersion> under the module
// root. Without them it skips t with how to build them, or fails it under
// CI=true.
func assets(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = cachePath(t, "kube-"+KubeVersion)
	}
	need(t, fmt.Sprintf("kube-apiserver and etcd in %s: build them with `make kube` (about 5 minutes, once)", dir),
		filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "etcd"))
	return dir
}

// CertManagerCRDs is the folder of cert-manager's CRDs: $CERT_MANAGER_CRDS,
// else the one `make test` fills in the cache.
func CertManagerCRDs(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CERT_MANAGER_CRDS")
	if dir == "" {
		dir = cachePath(t, "cert-manager-"+CertManagerVersion, "crds")
	}
	need(t, "cert-manager's CRDs in "+dir+": `make test` downloads them", filepath.Join(dir, "cert-manager.io_certificates.yaml"))
	return dir
}

// Kustomize renders the kustomization in dir with the kustomize binary:
// $KUSTOMIZE, else the one `make kustomize` builds.
func Kustomize(t testing.TB, dir string) []byte {
	t.Helper()
	bin := os.Getenv("KUSTOMIZE")
	if bin == "" {
		bin = cachePath(t, "tools", "kustomize")
	}
	need(t, "kustomize at "+bin+": build it with `make kustomize`", bin)
	out, err := exec.Command(bin, "build", dir).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		t.Fatalf("kustomize build %s: %s", dir, msg)
	}
	return out
}

func cachePath(t testing.TB, elem ...string) string {
	t.Helper()
	root, err := meshtest.ModuleRoot()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return filepath.Join(append([]string{root, ".cache"}, elem...)...)
}

// need skips t (fails it under CI=true) unless every file exists.
func need(t testing.TB, what string, files ...string) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			msg := "kubetest: this test needs " + what
			if privileged.InCI() {
				t.Fatal(msg + " (CI=true: failing instead of skipping)")
			}
			t.Skip(msg)
		}
	}
}

// Decode splits YAML documents into objects, skipping empty ones.
func Decode(t testing.TB, data []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("kubetest: decode manifests: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, &u)
		}
	}
}

// Apply server-side applies obj, as `kubectl apply --server-side` does;
// with dryRun the API server validates and admits it (webhooks included)
// without storing it.
func (e *Env) Apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	m, err := e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		e.mapper.Reset() // a CRD installed since the last lookup
		if m, err = e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return nil, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
	}
	var r dynamic.ResourceInterface = e.Dynamic.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		r = e.Dynamic.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	opts := metav1.ApplyOptions{FieldManager: "pillion-test", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	out, err := r.Apply(ctx, obj.GetName(), obj, opts)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.Kind, Name(obj), err)
	}
	return out, nil
}

// Name is "namespace/name" or "name".
func Name(obj *unstructured.Unstructured) string {
	return strings.TrimPrefix(obj.GetNamespace()+"/"+obj.GetName(), "/")
}
