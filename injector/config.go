package injector

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy/configfile"
	"github.com/pillionmesh/pillion/proxy/resolve"
)

// RawConfig is the injector's config file as written (the ConfigMap
// deploy/ installs), decoded strictly: an unknown field is an error.
// Validate turns it into a Config.
//
//	image: ghcr.io/pillionmesh/pillion-proxy:v0.1.0
//	imagePullPolicy: IfNotPresent
//	nativeSidecars: true
//	excludeNamespaces: [kube-system, pillion-system]
//	identity:
//	  csi: {driver: csi.spiffe.io, socket: spire-agent.sock}
//	discovery:
//	  address: pillion-discovery.pillion-system.svc:15012
//	  # identity: spiffe://cluster.local/ns/pillion-system/sa/pillion-discovery
//	  # or, to turn it off: discovery: {enabled: false}
//	proxy:
//	  logLevel: info
//	  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 256Mi}}
//	  rewriteAppProbes: true
//	  config: |
//	    mesh: {mode: PERMISSIVE}
type RawConfig struct {
	Image             string            `json:"image"`
	ImagePullPolicy   corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	NativeSidecars    *bool             `json:"nativeSidecars,omitempty"`
	ExcludeNamespaces []string          `json:"excludeNamespaces,omitempty"`
	Identity          Identity          `json:"identity"`
	Discovery         RawDiscovery      `json:"discovery"`
	Proxy             RawProxy          `json:"proxy"`
}

// RawDiscovery is the `discovery` section: where every injected sidecar
// looks its destinations up (`pillion proxy --discovery-address` and
// `--discovery-id`). Left out, the sidecars use the pillion-discovery
// Service deploy/ installs, at DefaultDiscoveryAddress.
type RawDiscovery struct {
	// Enabled false turns discovery off: the sidecars then forward to
	// each connection's original destination, in mTLS only to the
	// addresses their config's mesh.networks names. Nil means true.
	// Address and Identity may not be given with it.
	Enabled *bool `json:"enabled,omitempty"`
	// Address is discovery's host:port, the host an IP address or a DNS
	// name. Nil means DefaultDiscoveryAddress; "" is an error (turning
	// discovery off is said with Enabled).
	Address *string `json:"address,omitempty"`
	// Identity is the SPIFFE ID discovery must present. "" means the
	// sidecar's default: spiffe://<its own trust
	// domain>/ns/pillion-system/sa/pillion-discovery.
	Identity string `json:"identity,omitempty"`
}

// Identity says where the sidecar takes its SVID from: exactly one of its
// fields is set.
type Identity struct {
	// CSI mounts the Workload API socket with a CSI driver, such as the
	// SPIFFE CSI driver (csi.spiffe.io). The recommended way: it works
	// under the restricted Pod Security Standard.
	CSI *WorkloadAPIVolume `json:"csi,omitempty"`
	// HostPath mounts the node's Workload API socket folder.
	HostPath *WorkloadAPIVolume `json:"hostPath,omitempty"`
	// Secret mounts PEM files (svid.pem, svid-key.pem, bundle.pem) from a
	// Secret in the pod's namespace; the pod annotation
	// sidecar.pillion.io/svid-secret names another one.
	Secret *SecretIdentity `json:"secret,omitempty"`
}

// WorkloadAPIVolume is a folder holding a Workload API socket.
type WorkloadAPIVolume struct {
	// Driver is the CSI driver's name (csi only).
	Driver string `json:"driver,omitempty"`
	// Path is the node's folder (hostPath only).
	Path string `json:"path,omitempty"`
	// Socket is the socket's file name in the folder.
	Socket string `json:"socket"`
}

// SecretIdentity names the Secret holding the SVID as PEM files.
type SecretIdentity struct {
	Name string `json:"name"`
}

// RawProxy is the `proxy` section: how the sidecar container runs.
type RawProxy struct {
	LogLevel         string                      `json:"logLevel,omitempty"`
	Resources        corev1.ResourceRequirements `json:"resources,omitempty"`
	RewriteAppProbes *bool                       `json:"rewriteAppProbes,omitempty"`
	// Config is the sidecar's own config file (`pillion proxy --config`),
	// given to every injected pod that does not bring its own in the
	// annotation sidecar.pillion.io/proxy-config.
	Config string `json:"config,omitempty"`
}

// Config is the validated injector config. It is immutable once built and
// safe for concurrent use.
type Config struct {
	Image             string
	ImagePullPolicy   corev1.PullPolicy
	NativeSidecars    bool
	ExcludeNamespaces []string // sorted, kube-system always in
	Identity          Identity // exactly one source set, defaults filled
	LogLevel          string
	Resources         corev1.ResourceRequirements
	RewriteAppProbes  bool
	ProxyConfig       string // "" for none
	// DiscoveryAddress is the host:port of `pillion discovery` every
	// sidecar is given; "" when discovery is turned off.
	DiscoveryAddress string
	// DiscoveryID is the SPIFFE ID discovery must present; zero for the
	// sidecar's default (always zero when DiscoveryAddress is "").
	DiscoveryID spiffeid.ID
}

// Defaults of the fields a config may leave out.
const (
	DefaultLogLevel  = "info"
	DefaultCSIDriver = "csi.spiffe.io"
	DefaultSocket    = "spire-agent.sock"
	// DefaultDiscoveryAddress is `pillion discovery` as deploy/ installs
	// it: the Service pillion-discovery in pillion-system, gRPC port
	// 15012.
	DefaultDiscoveryAddress = "pillion-discovery.pillion-system.svc:15012"
)

// DefaultResources are the sidecar's requests and limits when the config
// says nothing.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("10m"),
			corev1.ResourceMemory: resource.MustParse("32Mi"),
		},
		Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

// LoadConfig reads and validates the config file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, prefixed(err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("injector: %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes data strictly and validates it.
func ParseConfig(data []byte) (*Config, error) {
	cfg, err := parseConfig(data)
	return cfg, prefixed(err)
}

func parseConfig(data []byte) (*Config, error) {
	var raw RawConfig
	if err := yaml.UnmarshalStrict(data, &raw); err != nil {
		// sigs.k8s.io/yaml goes through JSON and says so twice.
		msg := strings.ReplaceAll(err.Error(), "error unmarshaling JSON: while decoding JSON: json: ", "")
		return nil, fmt.Errorf("config: %s", msg)
	}
	return raw.validate()
}

// Validate checks every field and fills the defaults. The error names each
// wrong field by its path in the file, one per line.
func (r RawConfig) Validate() (*Config, error) {
	c, err := r.validate()
	return c, prefixed(err)
}

func (r RawConfig) validate() (*Config, error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	c := &Config{
		Image:            r.Image,
		ImagePullPolicy:  r.ImagePullPolicy,
		NativeSidecars:   r.NativeSidecars == nil || *r.NativeSidecars,
		LogLevel:         cmp.Or(r.Proxy.LogLevel, DefaultLogLevel),
		Resources:        r.Proxy.Resources,
		RewriteAppProbes: r.Proxy.RewriteAppProbes == nil || *r.Proxy.RewriteAppProbes,
		ProxyConfig:      r.Proxy.Config,
	}
	if strings.TrimSpace(c.Image) == "" {
		fail("image", "required: the image the init container and the sidecar run")
	}
	switch c.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		fail("imagePullPolicy", "%q: want Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	c.ExcludeNamespaces = append([]string{"kube-system"}, r.ExcludeNamespaces...)
	slices.Sort(c.ExcludeNamespaces)
	c.ExcludeNamespaces = slices.Compact(c.ExcludeNamespaces)
	var err error
	if c.Identity, err = r.Identity.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DiscoveryAddress, c.DiscoveryID, err = r.Discovery.validate(); err != nil {
		errs = append(errs, err)
	}
	if !validLogLevel(c.LogLevel) {
		fail("proxy.logLevel", "%q: want debug, info, warn or error", c.LogLevel)
	}
	if len(c.Resources.Requests) == 0 && len(c.Resources.Limits) == 0 {
		c.Resources = DefaultResources()
	}
	if c.ProxyConfig != "" {
		if err := configfile.Check([]byte(c.ProxyConfig), builtin.Registry()); err != nil {
			fail("proxy.config", "%v", err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

func (id Identity) validate() (Identity, error) {
	n := 0
	for _, set := range []bool{id.CSI != nil, id.HostPath != nil, id.Secret != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return id, errors.New("identity: set exactly one of csi, hostPath and secret")
	}
	out := id
	switch {
	case id.CSI != nil:
		v := *id.CSI
		v.Driver = cmp.Or(v.Driver, DefaultCSIDriver)
		v.Socket = cmp.Or(v.Socket, DefaultSocket)
		if v.Path != "" {
			return id, errors.New("identity.csi.path: only for hostPath")
		}
		if err := checkSocketName("identity.csi.socket", v.Socket); err != nil {
			return id, err
		}
		out.CSI = &v
	case id.HostPath != nil:
		v := *id.HostPath
		v.Socket = cmp.Or(v.Socket, DefaultSocket)
		if v.Driver != "" {
			return id, errors.New("identity.hostPath.driver: only for csi")
		}
		if !strings.HasPrefix(v.Path, "/") {
			return id, fmt.Errorf("identity.hostPath.path: %q: want an absolute path on the node", v.Path)
		}
		if err := checkSocketName("identity.hostPath.socket", v.Socket); err != nil {
			return id, err
		}
		out.HostPath = &v
	default:
		if err := checkSecretName("identity.secret.name", id.Secret.Name); err != nil {
			return id, err
		}
	}
	return out, nil
}

// validate returns the address and SPIFFE ID the sidecars are given: ""
// and zero when discovery is turned off, the default address when none is
// given. The error names every wrong field.
func (d RawDiscovery) validate() (string, spiffeid.ID, error) {
	if d.Enabled != nil && !*d.Enabled {
		var errs []error
		if d.Address != nil {
			errs = append(errs, errors.New("discovery.address: given with discovery.enabled: false; remove one of them"))
		}
		if d.Identity != "" {
			errs = append(errs, errors.New("discovery.identity: given with discovery.enabled: false; remove one of them"))
		}
		return "", spiffeid.ID{}, errors.Join(errs...)
	}
	addr := DefaultDiscoveryAddress
	if d.Address != nil {
		addr = *d.Address
	}
	var errs []error
	if err := checkHostPort(addr); err != nil {
		errs = append(errs, fmt.Errorf("discovery.address: %w", err))
	}
	var id spiffeid.ID
	if d.Identity != "" {
		var err error
		if id, err = spiffeid.FromString(d.Identity); err != nil {
			errs = append(errs, fmt.Errorf("discovery.identity: %q: %w", d.Identity, err))
		}
	}
	if len(errs) > 0 {
		return "", spiffeid.ID{}, errors.Join(errs...)
	}
	return addr, id, nil
}

// checkHostPort accepts host:port with the host an IP address or a DNS
// name and the port 1-65535.
func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New(`"": want host:port; to turn discovery off, set discovery.enabled: false`)
	}
	host, err := resolve.SplitAddress(addr)
	switch {
	case errors.Is(err, resolve.ErrNotHostPort):
		return fmt.Errorf("%q: %w, such as %s", addr, err, DefaultDiscoveryAddress)
	case err != nil:
		return fmt.Errorf("%q: %w", addr, err)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if len(validation.IsDNS1123Subdomain(strings.TrimSuffix(host, "."))) > 0 {
		return fmt.Errorf("%q: %q is not an IP address or a DNS name", addr, host)
	}
	return nil
}

// validLogLevel reports whether l is one of the sidecar's --log-level
// values.
func validLogLevel(l string) bool {
	return slices.Contains([]string{"debug", "info", "warn", "error"}, l)
}

func checkSocketName(field, s string) error {
	if s == "" || strings.Contains(s, "/") || s == "." || s == ".." {
		return fmt.Errorf("%s: %q: want a file name in the mounted folder", field, s)
	}
	return nil
}
