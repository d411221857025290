package injector

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const minimalConfig = "image: x\nidentity: {csi: {}}\n"

// TestDiscoveryConfig: what each discovery section gives the sidecars.
func TestDiscoveryConfig(t *testing.T) {
	for _, c := range []struct {
		name, yaml, addr, id string
	}{
		{"left out: deploy/'s Service", "", DefaultDiscoveryAddress, ""},
		{"empty section", "discovery: {}", DefaultDiscoveryAddress, ""},
		{"enabled, default address", "discovery: {enabled: true}", DefaultDiscoveryAddress, ""},
		{"null address: the default", "discovery:\n  address:", DefaultDiscoveryAddress, ""},
		{"address and identity", "discovery: {address: 'discovery.mesh.example:15012', identity: 'spiffe://example.org/ns/mesh/sa/discovery'}",
			"discovery.mesh.example:15012", "spiffe://example.org/ns/mesh/sa/discovery"},
		{"fully qualified name", "discovery: {address: 'pillion-discovery.pillion-system.svc.cluster.local.:15012'}",
			"pillion-discovery.pillion-system.svc.cluster.local.:15012", ""},
		{"IPv4", "discovery: {address: '10.96.0.12:15012'}", "10.96.0.12:15012", ""},
		{"IPv6", "discovery: {address: '[fd00::12]:15012'}", "[fd00::12]:15012", ""},
		{"turned off", "discovery: {enabled: false}", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(minimalConfig + c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			var want spiffeid.ID
			if c.id != "" {
				want = spiffeid.RequireFromString(c.id)
			}
			if cfg.DiscoveryAddress != c.addr || cfg.DiscoveryID != want {
				t.Errorf("address %q, id %q; want %q, %q", cfg.DiscoveryAddress, cfg.DiscoveryID, c.addr, c.id)
			}
		})
	}
}

// TestDiscoveryConfigErrors: each bad discovery section is refused with a
// message naming the field, all of them at once.
func TestDiscoveryConfigErrors(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"discovery: {address: ''}",
			`discovery.address: "": want host:port; to turn discovery off, set discovery.enabled: false`},
		{"discovery: {address: pillion-discovery}",
			`discovery.address: "pillion-discovery": want host:port, such as pillion-discovery.pillion-system.svc:15012`},
		{"discovery: {address: ':15012'}",
			`discovery.address: ":15012": want host:port, such as pillion-discovery.pillion-system.svc:15012`},
		{"discovery: {address: 'fd00::12:15012'}",
			`discovery.address: "fd00::12:15012": want host:port, such as pillion-discovery.pillion-system.svc:15012`},
		{"discovery: {address: 'pillion-discovery:0'}",
			`discovery.address: "pillion-discovery:0": "0" is not a port number (1-65535)`},
		{"discovery: {address: 'pillion-discovery:65536'}",
			`discovery.address: "pillion-discovery:65536": "65536" is not a port number (1-65535)`},
		{"discovery: {address: 'pillion-discovery:grpc'}",
			`discovery.address: "pillion-discovery:grpc": "grpc" is not a port number (1-65535)`},
		{"discovery: {address: 'dns:///pillion-discovery:15012'}",
			`discovery.address: "dns:///pillion-discovery:15012": want host:port, such as pillion-discovery.pillion-system.svc:15012`},
		{"discovery: {address: 'Pillion_Discovery:15012'}",
			`discovery.address: "Pillion_Discovery:15012": "Pillion_Discovery" is not an IP address or a DNS name`},
		{"discovery: {identity: 'pillion-discovery'}",
			`discovery.identity: "pillion-discovery": scheme is missing or invalid`},
		{"discovery: {identity: 'spiffe://Example.org/ns/pillion-system/sa/pillion-discovery'}",
			`discovery.identity: "spiffe://Example.org/ns/pillion-system/sa/pillion-discovery": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{"discovery: {address: 'x:0', identity: 'x'}",
			"discovery.address: \"x:0\": \"0\" is not a port number (1-65535)\ndiscovery.identity: \"x\": scheme is missing or invalid"},
		{"discovery: {enabled: false, address: 'pillion-discovery.pillion-system.svc:15012'}",
			`discovery.address: given with discovery.enabled: false; remove one of them`},
		{"discovery: {enabled: false, address: ''}",
			`discovery.address: given with discovery.enabled: false; remove one of them`},
		{"discovery: {enabled: false, identity: 'spiffe://example.org/ns/mesh/sa/discovery'}",
			`discovery.identity: given with discovery.enabled: false; remove one of them`},
		{"discovery: {address: 'pillion discovery:15012'}",
			`discovery.address: "pillion discovery:15012": "pillion discovery" is not an IP address or a DNS name`},
		{"discovery: {adress: 'x:1'}",
			`config: unknown field "adress"`},
	} {
		t.Run(c.yaml, func(t *testing.T) {
			_, err := ParseConfig([]byte(minimalConfig + c.yaml))
			if err == nil || err.Error() != "injector: "+c.want {
				t.Errorf("got  %v\nwant injector: %s", err, c.want)
			}
		})
	}
}

// FuzzParseConfig: no config file makes ParseConfig panic, and one it
// accepts gives the sidecar a discovery address it accepts too.
func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"config.yaml", "discovery-off.config.yaml", "secret-identity.config.yaml", "hostpath-identity.config.yaml"} {
		data, err := os.ReadFile(filepath.Join(goldenDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add(minimalConfig + "discovery: {address: '[fd00::12]:15012', identity: 'spiffe://a/b'}")
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := ParseConfig([]byte(data))
		if err != nil || cfg.DiscoveryAddress == "" {
			return
		}
		if err := checkHostPort(cfg.DiscoveryAddress); err != nil {
			t.Errorf("accepted discovery address %q: %v", cfg.DiscoveryAddress, err)
		}
		if _, _, err := net.SplitHostPort(cfg.DiscoveryAddress); err != nil {
			t.Errorf("accepted discovery address %q: %v", cfg.DiscoveryAddress, err)
		}
	})
}
