package injector

import (
	"os"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// shippedConfigMap is the mesh config deploy/ installs.
const shippedConfigMap = "../deploy/base/configmap.yaml"

// TestShippedConfig: the ConfigMap deploy/ installs validates, points the
// sidecars at the discovery Service deploy/ installs, and gives them a
// proxy config that parses, PERMISSIVE inbound, with no mesh.networks to
// type.
func TestShippedConfig(t *testing.T) {
	data, err := os.ReadFile(shippedConfigMap)
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		t.Fatalf("%s: %v", shippedConfigMap, err)
	}
	cfg, err := ParseConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("%s: config.yaml: %v", shippedConfigMap, err)
	}
	if cfg.DiscoveryAddress != DefaultDiscoveryAddress || !cfg.DiscoveryID.IsZero() {
		t.Errorf("discovery %q, id %q; want %q and the sidecar's default ID", cfg.DiscoveryAddress, cfg.DiscoveryID, DefaultDiscoveryAddress)
	}
	proxyCfg, err := configfile.Parse([]byte(cfg.ProxyConfig), builtin.Registry())
	if err != nil {
		t.Fatalf("proxy.config: %v", err)
	}
	if m := proxyCfg.Mesh; m.Mode != configfile.Permissive || len(m.Networks) != 0 || len(m.Exclude) != 0 {
		t.Errorf("proxy.config mesh %+v, want PERMISSIVE and no networks (discovery knows them)", m)
	}

	// What an injected pod gets: the discovery address on the sidecar's
	// command line, and the proxy config in the annotation it reads.
	res, err := Inject(newPod(nil), Namespace{"shop", true}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, c := range res.Pod.Spec.InitContainers {
		if c.Name == ProxyName {
			args = c.Args
		}
	}
	want := "--discovery-address=" + DefaultDiscoveryAddress
	if !slices.Contains(args, want) {
		t.Errorf("sidecar args %q lack %s", args, want)
	}
	if _, err := configfile.Parse([]byte(res.Pod.Annotations[ProxyConfigAnnotation]), builtin.Registry()); err != nil {
		t.Errorf("annotation %s: %v", ProxyConfigAnnotation, err)
	}
}
