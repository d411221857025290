package resolve

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/pillionmesh/pillion/api/discovery/v1"
	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func svcAnswer(eps ...*discoveryv1.Endpoint) *discoveryv1.WatchResponse {
	return &discoveryv1.WatchResponse{
		Destination: "198.19.0.10:80",
		State: &discoveryv1.Destination{
			Kind:      discoveryv1.Destination_SERVICE,
			Service:   &discoveryv1.ServiceRef{Namespace: "shop", Name: "web", PortName: "http"},
			Endpoints: eps,
			Protocol:  discoveryv1.ProtocolHint_HTTP,
		},
	}
}

func TestDecodeService(t *testing.T) {
	dst, st, err := decode(td, svcAnswer(
		&discoveryv1.Endpoint{Address: "198.18.0.2:8080", Ready: true, Serving: true, Meshed: true,
			Identity: "spiffe://cluster.local/ns/shop/sa/web", Zone: "z1",
			Pod: &discoveryv1.PodRef{Namespace: "shop", Name: "web-1"}, Workload: &discoveryv1.Workload{Name: "web", App: "web", Version: "v1.2_rc-3"}},
		&discoveryv1.Endpoint{Address: "[::ffff:198.18.0.3]:8080", Weight: 3, Terminating: true, Serving: true},
	))
	if err != nil {
		t.Fatal(err)
	}
	if dst != netip.MustParseAddrPort("198.19.0.10:80") {
		t.Errorf("destination = %v", dst)
	}
	svc := upstream.Service{Namespace: "shop", Name: "web"}
	want := &State{Kind: Service, Service: svc, Protocol: HTTP, Endpoints: []balance.Endpoint{
		{Endpoint: upstream.Endpoint{Addr: netip.MustParseAddrPort("198.18.0.2:8080"), Meshed: true,
			Identity: "spiffe://cluster.local/ns/shop/sa/web", Service: svc,
			Workload: &upstream.Workload{Name: "web", Namespace: "shop", App: "web", Version: "v1.2_rc-3"}}, Weight: 1, Zone: "z1", Ready: true, Serving: true},
		{Endpoint: upstream.Endpoint{Addr: netip.MustParseAddrPort("198.18.0.3:8080"), Service: svc},
			Weight: 3, Serving: true, Terminating: true},
	}}
	if diff := cmp.Diff(want, st, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

func TestDecodeRefusesWhatCannotBeTrusted(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    *discoveryv1.WatchResponse
		want string // in State.Err
	}{
		{"meshed without identity", svcAnswer(&discoveryv1.Endpoint{Address: "198.18.0.2:8080", Ready: true, Meshed: true}),
			`state.endpoints[0]: identity: "": a meshed endpoint needs the SPIFFE ID it must present`},
		{"identity of another trust domain", svcAnswer(&discoveryv1.Endpoint{Address: "198.18.0.2:8080", Meshed: true,
			Identity: "spiffe://evil.example/ns/shop/sa/web"}),
			`state.endpoints[0]: identity: "spiffe://evil.example/ns/shop/sa/web" is not of our trust domain "cluster.local"`},
		{"bad address", svcAnswer(&discoveryv1.Endpoint{Address: "web:8080"}), `state.endpoints[0]: address:`},
		{"loopback address", svcAnswer(&discoveryv1.Endpoint{Address: "127.0.0.1:8080"}),
			`state.endpoints[0]: address: 127.0.0.1:8080 is not a unicast address and port`},
		{"port zero", svcAnswer(&discoveryv1.Endpoint{Address: "198.18.0.2:0"}), `is not a unicast address and port`},
		{"service without name", &discoveryv1.WatchResponse{Destination: "198.19.0.10:80",
			State: &discoveryv1.Destination{Kind: discoveryv1.Destination_SERVICE}},
			"state.service: a SERVICE destination needs the Service's namespace and name"},
		{"unknown kind", &discoveryv1.WatchResponse{Destination: "198.19.0.10:80",
			State: &discoveryv1.Destination{Kind: 7}}, "state.kind: 7 is not a kind this sidecar knows"},
		{"no state", &discoveryv1.WatchResponse{Destination: "198.19.0.10:80"}, "state: missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, st, err := decode(td, tc.m)
			if err != nil {
				t.Fatalf("decode: %v (the destination was valid: want a State with Err)", err)
			}
			if st.Err == nil || !strings.Contains(st.Err.Error(), tc.want) {
				t.Fatalf("Err = %v, want it to contain %q", st.Err, tc.want)
			}
			if !strings.HasPrefix(st.Err.Error(), "resolve: discovery's answer for 198.19.0.10:80: ") {
				t.Errorf("Err = %v, want it to name the destination", st.Err)
			}
			if len(st.Endpoints) != 0 {
				t.Errorf("an invalid answer kept %d endpoints", len(st.Endpoints))
			}
		})
	}
}

// TestDecodeDropsABadWorkload: a workload that cannot be a label value is
// left out, naming the field, and the endpoints stand: telemetry never
// takes a destination's traffic down. Any name Kubernetes allows (a
// custom controller's, in capitals) is kept.
func TestDecodeDropsABadWorkload(t *testing.T) {
	ns := &discoveryv1.PodRef{Namespace: "shop"}
	for _, tc := range []struct {
		name    string
		pod     *discoveryv1.PodRef
		w       *discoveryv1.Workload
		dropped string // "": kept
	}{
		{"a custom controller's name", ns, &discoveryv1.Workload{Name: "MyApp_v2", App: "web", Version: "1.0"}, ""},
		{"no namespace", nil, &discoveryv1.Workload{Name: "web"}, "state.endpoints[0].workload: namespace: required"},
		{"a control character", ns, &discoveryv1.Workload{Name: "web", App: "a\nb"}, `state.endpoints[0].workload: app: "a\nb": has a control character`},
		{"not UTF-8", ns, &discoveryv1.Workload{Name: "\xff"}, `state.endpoints[0].workload: name: "\xff": not UTF-8`},
		{"too long", ns, &discoveryv1.Workload{Name: "web", Version: strings.Repeat("v", 254)}, "state.endpoints[0].workload: version: 254 bytes: at most 253"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, st, err := decode(td, svcAnswer(&discoveryv1.Endpoint{Address: "198.18.0.2:8080", Ready: true, Pod: tc.pod, Workload: tc.w}))
			if err != nil || st.Err != nil {
				t.Fatalf("decode: %v, %v; want the answer taken", err, st.Err)
			}
			if len(st.Endpoints) != 1 {
				t.Fatalf("%d endpoints, want the one", len(st.Endpoints))
			}
			w := st.Endpoints[0].Workload
			if tc.dropped == "" {
				if st.Dropped != nil || w == nil || w.Name != tc.w.Name {
					t.Errorf("workload %+v, dropped %v; want %q kept", w, st.Dropped, tc.w.Name)
				}
				return
			}
			if w != nil || st.Dropped == nil || st.Dropped.Error() != tc.dropped {
				t.Errorf("workload %+v, dropped %v; want it left out: %s", w, st.Dropped, tc.dropped)
			}
		})
	}
}

func TestDecodeDropsAnswerForNoDestination(t *testing.T) {
	_, _, err := decode(td, &discoveryv1.WatchResponse{Destination: "web.shop:80"})
	if err == nil || !strings.HasPrefix(err.Error(), `resolve: answer for "web.shop:80": destination:`) {
		t.Fatalf("err = %v", err)
	}
}

// FuzzDecode: whatever discovery (or something posing as it) sends, decode
// never panics, and an answer it takes holds only endpoints that are safe
// to dial: a unicast address and port, and a SPIFFE ID of our trust domain
// for every meshed one.
func FuzzDecode(f *testing.F) {
	for _, m := range []*discoveryv1.WatchResponse{
		svcAnswer(&discoveryv1.Endpoint{Address: "198.18.0.2:8080", Ready: true, Meshed: true, Identity: "spiffe://cluster.local/ns/a/sa/b"}),
		svcAnswer(&discoveryv1.Endpoint{Address: "[fd00:ca7::2]:8080", Ready: true}),
		{Destination: "198.18.0.5:80", State: &discoveryv1.Destination{Kind: discoveryv1.Destination_POD}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m discoveryv1.WatchResponse
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		dst, st, err := decode(td, &m)
		if err != nil {
			return
		}
		if !dst.IsValid() || dst.Addr().Is4In6() {
			t.Fatalf("destination %v taken", dst)
		}
		if st.Err != nil {
			if len(st.Endpoints) != 0 {
				t.Fatalf("invalid answer with endpoints")
			}
			return
		}
		for _, ep := range st.Endpoints {
			if !ep.Addr.Addr().IsGlobalUnicast() || ep.Addr.Port() == 0 || ep.Weight == 0 {
				t.Fatalf("endpoint %+v taken", ep)
			}
			if ep.Meshed {
				id, err := spiffeid.FromString(ep.Identity)
				if err != nil || id.TrustDomain() != td {
					t.Fatalf("meshed endpoint with identity %q taken", ep.Identity)
				}
			}
		}
	})
}
