package injector

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// TestMemoryLimit: GOMEMLIMIT is 90 % of the sidecar's memory limit in
// bytes (the runtime reads a bare number as bytes); no limit, no
// GOMEMLIMIT.
func TestMemoryLimit(t *testing.T) {
	for _, tt := range []struct {
		limit  string // "" for none
		want   string
		wantOK bool
	}{
		{"256Mi", "241591910", true},
		{"128Mi", "120795955", true},
		{"1G", "900000000", true},
		{"1.5Gi", "1449551462", true},
		{"", "", false},
	} {
		r := corev1.ResourceRequirements{Limits: corev1.ResourceList{}}
		if tt.limit != "" {
			r.Limits[corev1.ResourceMemory] = resource.MustParse(tt.limit)
		}
		got, ok := memoryLimit(r)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("limit %q: GOMEMLIMIT %q, %v; want %q, %v", tt.limit, got, ok, tt.want, tt.wantOK)
		}
	}
}
