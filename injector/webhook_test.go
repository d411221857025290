package injector

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/yaml"
)

func newTestWebhook(t testing.TB) (*Webhook, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w, err := NewWebhook(testConfig(t), zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return w, reg
}

// review builds an AdmissionReview for creating the pod in podJSON.
func review(t testing.TB, podJSON []byte, resource string) []byte {
	t.Helper()
	body := map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":       "7f0b2c1e-0000-4000-8000-000000000001",
			"kind":      map[string]any{"group": "", "version": "v1", "kind": "Pod"},
			"resource":  map[string]any{"group": "", "version": "v1", "resource": resource},
			"namespace": "shop",
			"operation": "CREATE",
			"userInfo":  map[string]any{"username": "test"},
			"object":    json.RawMessage(podJSON),
		},
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(h http.Handler, path string, body []byte, contentType string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	h.ServeHTTP(rec, req)
	return rec
}

func decodeResponse(t testing.TB, rec *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil ||
		out.Response.UID != "7f0b2c1e-0000-4000-8000-000000000001" {
		t.Fatalf("response review %+v", out)
	}
	return out.Response
}

func podJSON(t testing.TB, file string) []byte {
	t.Helper()
	y, err := os.ReadFile(filepath.Join(goldenDir, file))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestWebhookMatchesInject: the webhook's patch, applied to the pod, gives
// exactly what `pillion inject` writes for it (its golden file).
func TestWebhookMatchesInject(t *testing.T) {
	w, _ := newTestWebhook(t)
	for _, c := range []string{"plain-pod", "probes", "classic-sidecar", "exclude-outbound-ip-ranges", "multiple-containers"} {
		raw := podJSON(t, c+".yaml")
		resp := decodeResponse(t, post(w.Handler(), NamespacePath, review(t, raw, "pods"), "application/json"))
		if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("%s: %+v", c, resp)
		}
		patched, err := ApplyPatch(raw, resp.Patch)
		if err != nil {
			t.Fatal(err)
		}
		got, err := yaml.JSONToYAML(patched)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(goldenDir, c+".injected"))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s: webhook and pillion inject differ (-inject +webhook):\n%s", c, diff)
		}
	}
}

func TestWebhookDecisions(t *testing.T) {
	w, reg := newTestWebhook(t)
	h := w.Handler()
	plain := podJSON(t, "plain-pod.yaml")
	asked := []byte(strings.Replace(string(plain), `"metadata":{`, `"metadata":{"annotations":{"pillion.io/inject":"enabled"},`, 1))
	bad := []byte(strings.Replace(string(plain), `"metadata":{`, `"metadata":{"annotations":{"traffic.pillion.io/exclude-outbound-ports":"smtp"},`, 1))

	if resp := decodeResponse(t, post(h, PodPath, review(t, plain, "pods"), "application/json")); !resp.Allowed || resp.Patch != nil {
		t.Errorf("pod path, pod did not ask: %+v, want allowed without a patch", resp)
	}
	if resp := decodeResponse(t, post(h, PodPath, review(t, asked, "pods"), "application/json")); !resp.Allowed || resp.Patch == nil {
		t.Errorf("pod path, pod asked: %+v, want a patch", resp)
	}
	resp := decodeResponse(t, post(h, NamespacePath, review(t, bad, "pods"), "application/json"))
	want := `pillion sidecar injection: annotation traffic.pillion.io/exclude-outbound-ports: "smtp": "smtp" is not a port number (1-65535)`
	if resp.Allowed || resp.Result == nil || resp.Result.Message != want || resp.Result.Code != 400 {
		t.Errorf("bad annotation: %+v, want denied with %q", resp.Result, want)
	}
	resp = decodeResponse(t, post(h, NamespacePath, review(t, []byte(`{"kind":"Secret"}`), "secrets"), "application/json"))
	if !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 1 {
		t.Errorf("not a pod: %+v, want allowed unchanged with a warning", resp)
	}
	resp = decodeResponse(t, post(h, NamespacePath, review(t, []byte(`{"spec":{"containers":"no"}}`), "pods"), "application/json"))
	if resp.Allowed || !strings.HasPrefix(resp.Result.Message, "pillion sidecar injection: decode pod: ") {
		t.Errorf("undecodable pod: %+v, want denied", resp.Result)
	}
	for _, c := range []struct{ result, reason string }{
		{resultSkipped, string(SkipNotAsked)}, {resultInjected, ""}, {resultDenied, ""}, {resultIgnored, "not_a_pod"},
	} {
		if got := testutil.ToFloat64(w.reviews.WithLabelValues(c.result, c.reason)); got < 1 {
			t.Errorf("pillion_injector_reviews_total{result=%q,reason=%q} = %v", c.result, c.reason, got)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "pillion_injector_review_duration_seconds"); err != nil || n != 1 {
		t.Errorf("duration histogram: %d series, %v", n, err)
	}
}

// TestWebhookMalformed: each malformed request gets its HTTP status and a
// message saying what is wrong.
func TestWebhookMalformed(t *testing.T) {
	w, _ := newTestWebhook(t)
	h := w.Handler()
	for _, c := range []struct {
		name, contentType, body string
		status                  int
		msg                     string
	}{
		{"not json", "application/json", "{", 400, "malformed AdmissionReview: unexpected end of JSON input"},
		{"wrong type", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`, 400,
			`malformed AdmissionReview: apiVersion "admission.k8s.io/v1beta1", kind "AdmissionReview": want admission.k8s.io/v1 AdmissionReview`},
		{"no request", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "malformed AdmissionReview: no request"},
		{"no uid", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`, 400, "malformed AdmissionReview: request.uid is empty"},
		{"yaml", "application/yaml", "{}", 415, `content type "application/yaml": want application/json`},
		{"too large", "application/json", `{"x":"` + strings.Repeat("a", MaxReviewBytes) + `"}`, 413, "AdmissionReview larger than 8388608 bytes"},
	} {
		rec := post(h, NamespacePath, []byte(c.body), c.contentType)
		if rec.Code != c.status || strings.TrimSpace(rec.Body.String()) != c.msg {
			t.Errorf("%s: %d %q, want %d %q", c.name, rec.Code, rec.Body.String(), c.status, c.msg)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PodPath, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", rec.Code)
	}
}

// FuzzReview: no request body makes the webhook panic; every answer is a
// 4xx with a message, or a well-formed review answering the request's UID.
func FuzzReview(f *testing.F) {
	f.Add(review(f, podJSON(f, "plain-pod.yaml"), "pods"))
	f.Add(review(f, podJSON(f, "probes.yaml"), "pods"))
	f.Add(review(f, []byte(`{"metadata":{"annotations":{"pillion.io/inject":"enabled","traffic.pillion.io/include-inbound-ports":"1,2"}},"spec":{"containers":[{"name":"a","readinessProbe":{"tcpSocket":{"port":"x"}}}]}}`), "pods"))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"resource":"pods"},"operation":"CREATE","object":null}}`))
	w, _ := newTestWebhook(f)
	h := w.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{NamespacePath, PodPath} {
			rec := post(h, path, body, "application/json")
			if rec.Code >= 400 && rec.Code < 500 {
				if rec.Body.Len() == 0 {
					t.Fatalf("%d without a message", rec.Code)
				}
				continue
			}
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d", rec.Code)
			}
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || out.Response.UID == "" {
				t.Fatalf("bad answer %q: %v", rec.Body, err)
			}
			if !out.Response.Allowed && (out.Response.Result == nil || out.Response.Result.Message == "") {
				t.Fatalf("denied without a message: %+v", out.Response)
			}
		}
	})
}

// FuzzAnnotations: any annotation values either inject or are refused
// with a message naming an annotation; an injected pod is injected once.
func FuzzAnnotations(f *testing.F) {
	f.Add("enabled", "80,443", "", "10.0.0.0/8", "*", "true", "100m")
	f.Add("disabled", "*", "1,2,3", "fd00::/8,1.2.3.4", "", "false", "1Gi")
	f.Add("", "15021", "0", "x", "8080", "maybe", "-1")
	cfg := testConfig(f)
	f.Fuzz(func(t *testing.T, inject, exIn, exOut, exRanges, inIn, native, cpu string) {
		ann := map[string]string{}
		for k, v := range map[string]string{
			InjectAnnotation: inject, ExcludeInboundPortsAnnotation: exIn, ExcludeOutboundPortsAnnotation: exOut,
			ExcludeOutboundIPRangesAnnotation: exRanges, IncludeInboundPortsAnnotation: inIn, NativeAnnotation: native, ProxyCPUAnnotation: cpu,
		} {
			if v != "" {
				ann[k] = v
			}
		}
		res, err := Inject(newPod(ann), Namespace{"shop", true}, cfg)
		if err != nil {
			if !strings.Contains(err.Error(), "annotation ") && !strings.Contains(err.Error(), "sidecar cpu") {
				t.Fatalf("error names no annotation: %v", err)
			}
			return
		}
		if res.Pod == nil {
			return
		}
		again, err := Inject(res.Pod, Namespace{"shop", true}, cfg)
		if err != nil || again.Skipped != SkipAlreadyInjected {
			t.Fatalf("second injection: %+v, %v", again, err)
		}
	})
}
