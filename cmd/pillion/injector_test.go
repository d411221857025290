//go:build !lean

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/kubetest"
)

// writeServingCert writes a serving certificate for 127.0.0.1, issued by a
// new CA, to dir as tls.crt and tls.key, and returns the CA to trust.
func writeServingCert(t *testing.T, dir string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	roots = x509.NewCertPool()
	if !roots.AppendCertsFromPEM(kubetest.WriteServingCert(t, dir)) {
		t.Fatal("no CA certificate")
	}
	return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), roots
}

// assertNotListening fails if anything accepts connections on the
// loopback ports.
func assertNotListening(t *testing.T, ports ...uint) {
	t.Helper()
	for _, p := range ports {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second)
		if err == nil {
			c.Close()
			t.Errorf("port %d still accepts connections", p)
		}
	}
}

// TestInjectorBadFlags: each bad flag or file exits 2 with one line naming
// it, and nothing is left listening.
func TestInjectorBadFlags(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 2)
	port, mport := fmt.Sprint(ports[0]), fmt.Sprint(ports[1])
	missing := filepath.Join(dir, "missing.yaml")
	unknownField := writeFile(t, "config.yaml", "imag: ghcr.io/pillionmesh/pillion:test\nidentity: {csi: {}}\n")
	noCert, noKey := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	garbage := writeFile(t, "garbage.pem", "not PEM\n")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"port 0", []string{"--port=0"}, "--port: 0 is not a port number (1-65535)"},
		{"port too big", []string{"--port=70000"}, "--port: 70000 is not a port number (1-65535)"},
		{"metrics port too big", []string{"--metrics-port=65536"}, "--metrics-port: 65536 is not a port number (1-65535)"},
		{"metrics port is the port", []string{"--metrics-port=" + port}, "--metrics-port: " + port + " is also the --port"},
		{"missing config", []string{"--config=" + missing}, "--config: open " + missing + ": no such file or directory"},
		{"config unknown field", []string{"--config=" + unknownField},
			"--config: " + unknownField + `: injector: config: unknown field "imag"`},
		{"missing cert", []string{"--config=" + injectTestConfig, "--tls-cert=" + noCert, "--tls-key=" + noKey},
			"--tls-cert, --tls-key: injector: serving certificate " + noCert + ", key " + noKey + ": open " + noCert + ": no such file or directory"},
		{"garbage cert", []string{"--config=" + injectTestConfig, "--tls-cert=" + garbage, "--tls-key=" + garbage},
			"--tls-cert, --tls-key: injector: serving certificate " + garbage + ", key " + garbage + ": tls: failed to find any PEM data in certificate input"},
		{"bad log level", []string{"--log-level=loud"}, `invalid value "loud" for flag -log-level: unrecognized level: "loud"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"injector", "--address=127.0.0.1", "--port=" + port, "--metrics-port=" + mport}, tt.args...)
			wantUsageError(t, args, "pillion injector: "+tt.want)
			assertNotListening(t, ports...)
		})
	}
}

// TestInjectorServes runs `pillion injector` until its context ends: it
// answers an AdmissionReview over TLS with the sidecar's patch, counts it
// in its metrics, and closes both ports when stopped.
func TestInjectorServes(t *testing.T) {
	certFile, keyFile, roots := writeServingCert(t, t.TempDir())
	ports := freePorts(t, 2)
	port, mport := ports[0], ports[1]

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"injector", "--address=127.0.0.1", fmt.Sprintf("--port=%d", port), fmt.Sprintf("--metrics-port=%d", mport),
			"--config=" + injectTestConfig, "--tls-cert=" + certFile, "--tls-key=" + keyFile}, &stdout, &stderr)
	}()
	exited := false
	t.Cleanup(func() {
		if !exited {
			cancel()
			<-done
		}
	})

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer client.CloseIdleConnections()
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d", mport)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := client.Get(metricsURL + "/healthz/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case code := <-done:
			exited = true
			t.Fatalf("exited %d before serving: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready after 10s")
		}
	}

	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"shop"},"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}`)
	review, err := json.Marshal(map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":       "4d6c1f9a-0000-4000-8000-000000000001",
			"kind":      map[string]any{"group": "", "version": "v1", "kind": "Pod"},
			"resource":  map[string]any{"group": "", "version": "v1", "resource": "pods"},
			"name":      "web",
			"namespace": "shop",
			"operation": "CREATE",
			"userInfo":  map[string]any{"username": "test"},
			"object":    json.RawMessage(pod),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Post(fmt.Sprintf("https://127.0.0.1:%d%s", port, injector.NamespacePath), "application/json", bytes.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, %v: %s", resp.StatusCode, err, body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	r := out.Response
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || r == nil || r.UID != "4d6c1f9a-0000-4000-8000-000000000001" {
		t.Fatalf("response %s, want an admission.k8s.io/v1 AdmissionReview answering the request's uid", body)
	}
	if !r.Allowed || r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("allowed %v, patch type %v; want allowed with a JSONPatch: %s", r.Allowed, r.PatchType, body)
	}
	if !bytes.Contains(r.Patch, []byte(`"pillion-proxy"`)) {
		t.Errorf("patch lacks pillion-proxy: %s", r.Patch)
	}
	patched, err := injector.ApplyPatch(pod, r.Patch)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"pillion-init", "pillion-proxy"}, containerNames(got.Spec.InitContainers)); diff != "" {
		t.Errorf("patched pod's initContainers (-want +got):\n%s", diff)
	}

	mresp, err := client.Get(metricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := `pillion_injector_reviews_total{reason="",result="injected"} 1` + "\n"; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q:\n%s", want, metrics)
	}

	client.CloseIdleConnections()
	cancel()
	select {
	case code := <-done:
		exited = true
		if code != 0 {
			t.Errorf("exit %d, want 0: %s", code, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5s after its context ended")
	}
	assertNotListening(t, port, mport)
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", stdout.String())
	}
	for _, want := range []string{`"msg":"injector serving","webhook":"127.0.0.1:` + fmt.Sprint(port) + `","metrics":"127.0.0.1:` + fmt.Sprint(mport) + `"`,
		`"msg":"admission","uid":"4d6c1f9a-0000-4000-8000-000000000001","namespace":"shop","name":"web","operation":"CREATE","namespace_enabled":true,"result":"injected","reason":""`,
		`"msg":"injector stopping"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, stderr.String())
		}
	}
}

// TestInjectorConfigWatcher: a changed config is given to the webhook
// once two reads agree; one that does not validate, and a missing file,
// are each logged once however often the file is polled.
func TestInjectorConfigWatcher(t *testing.T) {
	good, err := os.ReadFile(injectTestConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := injector.ParseConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	wh, err := injector.NewWebhook(cfg, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, "config.yaml", string(good))
	core, logs := observer.New(zap.InfoLevel)
	w := newInjectorConfigWatcher(path, good, wh, zap.New(core))
	const refused = "refusing the changed injector config; the one in use stays"
	count := func(msg string) int { return logs.FilterMessage(msg).Len() }

	next := strings.Replace(string(good), "image: ", "image: next.", 1)
	if next == string(good) {
		t.Fatalf("no image in %s", injectTestConfig)
	}
	for _, step := range []struct {
		name, content     string // content "": the file removed
		polls             int
		reloaded, refused int // logged so far
	}{
		{"unchanged", string(good), 3, 0, 0},
		{"changed, first read", next, 1, 0, 0},
		{"changed, second read", next, 1, 1, 0},
		{"invalid", next + "surprise: true\n", 5, 1, 1},
		{"missing", "", 5, 1, 2},
		{"back", string(good), 2, 2, 2},
	} {
		if step.content == "" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(path, []byte(step.content), 0o644); err != nil {
			t.Fatal(err)
		}
		for range step.polls {
			w.Poll()
		}
		if count("injector config reloaded") != step.reloaded || count(refused) != step.refused {
			t.Errorf("%s: %d reloads and %d refusals logged, want %d and %d", step.name,
				count("injector config reloaded"), count(refused), step.reloaded, step.refused)
		}
	}
	if l := logs.FilterMessage("injector config reloaded").All(); len(l) > 0 && !strings.HasPrefix(l[0].ContextMap()["image"].(string), "next.") {
		t.Errorf("the first reload logged image %v, want the changed one", l[0].ContextMap()["image"])
	}
}
