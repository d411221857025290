package injector

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDrainArgs: a native sidecar has no drain period; a classic one
// keeps the proxy's defaults (5 s + 5 s) when they fit in the pod's grace
// period, else shares it, ending a second before kubelet's SIGKILL.
func TestDrainArgs(t *testing.T) {
	grace := func(s int64) *int64 { return &s }
	for _, tc := range []struct {
		name   string
		grace  *int64
		native bool
		want   []string
	}{
		{"native", nil, true, []string{"--drain-period=0s"}},
		{"native, short grace", grace(3), true, []string{"--drain-period=0s"}},
		{"classic, default grace", nil, false, nil},
		{"classic, grace that fits", grace(11), false, nil},
		{"classic, 10 s: no second left to exit", grace(10), false, []string{"--drain-period=5s", "--drain-timeout=4s"}},
		{"classic, 9 s", grace(9), false, []string{"--drain-period=4.5s", "--drain-timeout=3.5s"}},
		{"classic, 6 s", grace(6), false, []string{"--drain-period=3s", "--drain-timeout=2s"}},
		{"classic, 1 s", grace(1), false, []string{"--drain-period=500ms", "--drain-timeout=0s"}},
		{"classic, 0 s", grace(0), false, []string{"--drain-period=0s", "--drain-timeout=0s"}},
		{"classic, negative", grace(-1), false, []string{"--drain-period=0s", "--drain-timeout=0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, drainArgs(tc.grace, tc.native)); diff != "" {
				t.Errorf("drainArgs (-want +got):\n%s", diff)
			}
		})
	}
}
