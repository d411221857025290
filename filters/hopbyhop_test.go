package filters

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRemoveHopByHop(t *testing.T) {
	for _, tc := range []struct {
		name        string
		in, want    http.Header
		wantUpgrade string
	}{
		{
			name: "standard and Connection-named headers go, the rest stays",
			in: http.Header{
				"Connection": {"keep-alive, X-Secret", "x-other"}, "Keep-Alive": {"timeout=5"},
				"X-Secret": {"s"}, "X-Other": {"o"}, "Proxy-Connection": {"close"}, "Transfer-Encoding": {"chunked"},
				"Proxy-Authorization": {"Basic x"}, "Trailer": {"X-T"}, "X-Keep": {"k"}, "Traceparent": {"00-abc-def-01"},
			},
			want: http.Header{"X-Keep": {"k"}, "Traceparent": {"00-abc-def-01"}},
		},
		{
			name: "TE is cut down to trailers",
			in:   http.Header{"Te": {"gzip, trailers"}},
			want: http.Header{"Te": {"trailers"}},
		},
		{
			name: "TE without trailers goes",
			in:   http.Header{"Te": {"gzip"}},
			want: http.Header{},
		},
		{
			name:        "websocket upgrade is reported",
			in:          http.Header{"Connection": {"Upgrade"}, "Upgrade": {"WebSocket"}, "Sec-Websocket-Key": {"k"}},
			want:        http.Header{"Sec-Websocket-Key": {"k"}},
			wantUpgrade: "websocket",
		},
		{
			name: "h2c upgrade is ignored",
			in:   http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAA"}},
			want: http.Header{},
		},
		{
			name: "Upgrade without Connection: upgrade is no upgrade",
			in:   http.Header{"Upgrade": {"websocket"}},
			want: http.Header{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := RemoveHopByHop(tc.in)
			if diff := cmp.Diff(tc.want, tc.in); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if up != tc.wantUpgrade {
				t.Errorf("upgrade = %q, want %q", up, tc.wantUpgrade)
			}
		})
	}
}

// FuzzRemoveHopByHop: whatever the client sends, no hop-by-hop header and
// no header the Connection header named survives, except TE: trailers.
func FuzzRemoveHopByHop(f *testing.F) {
	f.Add("keep-alive, X-A", "X-A", "v", "trailers, gzip", "websocket")
	f.Add("Upgrade", "Upgrade", "h2c", "", "h2c")
	f.Add(",,,", "", "", "trailers", "")
	f.Fuzz(func(t *testing.T, conn, name, value, te, upgrade string) {
		h := http.Header{"Connection": {conn}, "Te": {te}, "Upgrade": {upgrade}}
		if name != "" {
			h[http.CanonicalHeaderKey(name)] = []string{value}
		}
		RemoveHopByHop(h)
		for _, k := range hopByHop {
			if k == "Te" {
				if v := h.Values("Te"); len(v) > 1 || len(v) == 1 && v[0] != "trailers" {
					t.Fatalf("TE = %q", v)
				}
				continue
			}
			if _, ok := h[k]; ok {
				t.Fatalf("%s survived: %v", k, h)
			}
		}
	})
}

func TestRemoveInternal(t *testing.T) {
	h := http.Header{"Pillion-Orig-Proto": {"HTTP/1.1"}, "pillion-raw": {"x"}, "X-Pillion-Not": {"kept"}, "Pillion": {"kept"}, "Accept": {"*/*"}}
	RemoveInternal(h)
	want := http.Header{"X-Pillion-Not": {"kept"}, "Pillion": {"kept"}, "Accept": {"*/*"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("after RemoveInternal: %v, want %v", h, want)
	}
}
