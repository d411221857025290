package filters

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestReplyKeepsConnectionClose: a local answer drops the headers set
// before it, but for the server's own Connection: close (a draining
// sidecar's), and adds one after a downstream protocol error on HTTP/1.
func TestReplyKeepsConnectionClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		set   http.Header
		flags Flags
		want  []string
	}{
		{"none", http.Header{"X-Partial": {"v"}}, UpstreamConnectFailure, nil},
		{"draining", http.Header{"Connection": {"close"}, "X-Partial": {"v"}}, UpstreamConnectFailure, []string{"close"}},
		{"DPE", nil, DownstreamProtocolError, []string{"close"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r = r.WithContext(NewContext(r.Context(), &Info{}))
			w := httptest.NewRecorder()
			for k, v := range tc.set {
				w.Header()[k] = v
			}
			Reply(w, r, http.StatusServiceUnavailable, tc.flags, "no")
			if diff := cmp.Diff(tc.want, w.Result().Header["Connection"]); diff != "" {
				t.Errorf("Connection (-want +got):\n%s", diff)
			}
			if v := w.Result().Header.Get("X-Partial"); v != "" {
				t.Errorf("X-Partial %q survived the local answer", v)
			}
		})
	}
}
