package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/pillionmesh/pillion/injector"
	"github.com/pillionmesh/pillion/internal/meshtest"
	"github.com/pillionmesh/pillion/internal/testpod"
)

// runStoredPod plays kubelet for the pod the API server stored: it gives
// each of the pod's volumes a folder on this machine, runs the init
// container's command as root in pod a, starts the sidecar as the user its
// securityContext names with its env and args, and then checks from pods
// c and d (no sidecars) that capture and the exclusions behave exactly as
// the pod's annotations asked: inbound 9002 and outbound 9001 and d's
// addresses are left alone, the rest goes through the sidecar, which
// refuses plaintext (the STRICT config the injector put in the pod), and
// kubelet's rewritten probe still reaches the app.
func runStoredPod(t *testing.T, pod *corev1.Pod, a, c, d *testpod.Pod) {
	if pod == nil {
		t.Fatal("no stored pod: the first subtest failed")
	}
	meshtest.ServeEcho(t, a, ":8080")
	meshtest.ServeEcho(t, a, ":9002")
	meshtest.ServeHTTP(t, a, ":8081", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Write([]byte("app ok"))
			return
		}
		http.NotFound(w, r)
	}))
	meshtest.ServeEcho(t, c, ":8080")
	meshtest.ServeEcho(t, c, ":9001")
	meshtest.ServeEcho(t, d, ":8080")
	issuer := meshtest.StartIssuer(t, pillionBin, time.Hour, a)
	sc := runContainers(t, pod, a, podVolumes(t, pod, issuer.Socket(a)))

	t.Run("captured inbound plaintext is refused (STRICT)", func(t *testing.T) {
		if _, echoed, err := meshtest.Call(c, hostPort(a.IPv4, 8080), "x"); err == nil && echoed == "x" {
			t.Fatal("a plaintext client reached the app on a captured port")
		}
		if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool {
			return strings.HasPrefix(l.Msg, "refusing a connection that is not mTLS")
		}, 5*time.Second); !ok {
			t.Errorf("the sidecar logged no refusal:\n%s", sc.Proxy.Output())
		}
	})
	t.Run("excluded inbound port reaches the app directly", func(t *testing.T) {
		peer, echoed, err := meshtest.Call(c, hostPort(a.IPv4, 9002), "x")
		if err != nil || echoed != "x" || peer != c.IPv4.String() {
			t.Fatalf("c → a:9002: peer %q echoed %q, %v; want c's own address", peer, echoed, err)
		}
		if got := sc.Connections("inbound", hostPort(a.IPv4, 9002)); len(got) != 0 {
			t.Errorf("the sidecar saw an excluded inbound port: %+v", got)
		}
	})
	t.Run("kubelet's rewritten probe reaches the app through the sidecar", func(t *testing.T) {
		probe := pod.Spec.Containers[0].ReadinessProbe.HTTPGet
		url := "http://" + hostPort(a.IPv4, uint16(probe.Port.IntValue())) + probe.Path
		if got := curl(t, c, "-w", " %{http_code}", url); !strings.HasSuffix(got, "200 OK\n 200") {
			t.Errorf("GET %s from outside the mesh: %q, want 200 from the app's probe", url, got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := c.Command(ctx, testpod.Root, "curl", "-sS", "--max-time", "5", "http://"+hostPort(a.IPv4, 8081)+"/healthz").CombinedOutput(); err == nil {
			t.Errorf("the app's own port answered a plaintext caller under STRICT: %s", out)
		}
	})
	t.Run("captured outbound goes through the sidecar", func(t *testing.T) {
		dst := hostPort(c.IPv4, 8080)
		if _, echoed, err := meshtest.Call(a, dst, "x"); err != nil || echoed != "x" {
			t.Fatalf("a → %s: %q, %v", dst, echoed, err)
		}
		if _, ok := sc.WaitConnection("outbound", dst, 5*time.Second); !ok {
			t.Errorf("the sidecar did not carry a → %s:\n%s", dst, sc.Proxy.Output())
		}
	})
	t.Run("Istio's metrics name the pod's workload from the injected env", func(t *testing.T) {
		// The opaque connection above, reported by the caller's side with
		// the workload, namespace and app the injector passed.
		want := map[string]string{"reporter": "source", "source_workload": pod.Name, "source_workload_namespace": pod.Namespace,
			"source_app": "unknown", "request_protocol": "tcp"}
		for key := range istioScrape(t, a) {
			if !strings.HasPrefix(key, "istio_tcp_connections_opened_total{") {
				continue
			}
			ok := true
			for k, v := range want {
				ok = ok && strings.Contains(key, fmt.Sprintf("%s=%q", k, v))
			}
			if ok {
				return
			}
		}
		t.Errorf("no istio_tcp_connections_opened_total series with %v: %v", want, istioScrape(t, a))
	})
	for _, dst := range []string{hostPort(c.IPv4, 9001), hostPort(d.IPv4, 8080), hostPort(d.IPv6, 8080)} {
		t.Run("excluded outbound bypasses the sidecar/"+dst, func(t *testing.T) {
			peer, echoed, err := meshtest.Call(a, dst, "x")
			if err != nil || echoed != "x" {
				t.Fatalf("a → %s: %q, %v", dst, echoed, err)
			}
			if ap := netip.MustParseAddrPort(dst); (ap.Addr().Is4() && peer != a.IPv4.String()) || (ap.Addr().Is6() && peer != a.IPv6.String()) {
				t.Errorf("server saw %s, want pod a itself", peer)
			}
			// A captured call after it is logged; the excluded one never is.
			marker := hostPort(c.IPv4, 8080)
			before := len(sc.Connections("outbound", marker))
			if _, _, err := meshtest.Call(a, marker, "marker"); err != nil {
				t.Fatal(err)
			}
			if _, ok := sc.WaitLog(func(meshtest.LogLine) bool { return len(sc.Connections("outbound", marker)) > before }, 5*time.Second); !ok {
				t.Fatal("marker call not logged")
			}
			if got := sc.Connections("outbound", dst); len(got) != 0 {
				t.Errorf("the sidecar saw an excluded destination: %+v", got)
			}
		})
	}
}

// podVolumes gives each of the pod's volumes a folder, as kubelet would
// mount it: the Workload API volume holds the socket of a local
// `pillion identity`, a downward API volume holds the annotations it
// names.
func podVolumes(t *testing.T, pod *corev1.Pod, socket string) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir, err := os.MkdirTemp("", "pillion-vol-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil { // the sidecar's UID reads it
			t.Fatal(err)
		}
		switch {
		case v.CSI != nil && v.CSI.Driver == "csi.spiffe.io":
			if err := os.Symlink(socket, filepath.Join(dir, injector.DefaultSocket)); err != nil {
				t.Fatal(err)
			}
		case v.DownwardAPI != nil:
			for _, item := range v.DownwardAPI.Items {
				key, ok := strings.CutPrefix(item.FieldRef.FieldPath, "metadata.annotations['")
				key, ok2 := strings.CutSuffix(key, "']")
				if !ok || !ok2 {
					t.Fatalf("volume %s: downward API field %q: the stand-in only knows annotations", v.Name, item.FieldRef.FieldPath)
				}
				if err := os.WriteFile(filepath.Join(dir, item.Path), []byte(pod.Annotations[key]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		default:
			t.Fatalf("volume %s: no stand-in for %+v", v.Name, v.VolumeSource)
		}
		dirs[v.Name] = dir
	}
	return dirs
}

// runContainers runs the pod's pillion containers in order: the capture
// init container to completion as root, then the sidecar, until ready.
func runContainers(t *testing.T, pod *corev1.Pod, in *testpod.Pod, volumes map[string]string) *meshtest.Sidecar {
	t.Helper()
	initC, proxyC := findContainer(pod, injector.InitName), findContainer(pod, injector.ProxyName)
	if initC == nil || proxyC == nil || len(initC.Command) != 0 || len(proxyC.Command) != 0 {
		t.Fatalf("stored pod lacks the pillion containers, or overrides the image's entrypoint: %v", pod.Spec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := in.Exec(ctx, pillionBin, initC.Args...); err != nil {
		t.Fatalf("init container: %v\n%s", err, out)
	}
	// Paths inside the container become the volumes' folders.
	resolve := func(s string) string {
		for _, m := range proxyC.VolumeMounts {
			s = strings.ReplaceAll(s, m.MountPath+"/", volumes[m.Name]+"/")
		}
		return s
	}
	argv := []string{}
	for _, e := range proxyC.Env {
		v := resolve(e.Value)
		if f := e.ValueFrom; f != nil {
			// The downward API, as kubelet fills it.
			switch {
			case f.FieldRef != nil && f.FieldRef.FieldPath == "status.podIP":
				v = in.IPv4.String()
			case f.FieldRef != nil && f.FieldRef.FieldPath == "metadata.namespace":
				v = pod.Namespace
			default:
				t.Fatalf("sidecar env %s: %+v: runContainers knows only fieldRef status.podIP and metadata.namespace", e.Name, f)
			}
		}
		argv = append(argv, e.Name+"="+v)
	}
	argv = append(argv, pillionBin)
	for _, a := range proxyC.Args {
		argv = append(argv, resolve(a))
	}
	// The checks read the sidecar's line per connection, written at debug
	// (the last --log-level given wins, as meshtest's sidecars do).
	argv = append(argv, "--log-level=debug")
	sec := proxyC.SecurityContext
	user := testpod.User{UID: uint32(*sec.RunAsUser), GID: uint32(*sec.RunAsGroup)}
	if user != testpod.ProxyUser {
		t.Fatalf("sidecar runs as %+v, want UID/GID 1337", user)
	}
	sc := &meshtest.Sidecar{Pod: in, Bin: pillionBin, Proxy: in.Start(t, user, "env", argv...)}
	if _, ok := sc.WaitLog(func(l meshtest.LogLine) bool { return l.Msg == "ready" }, 15*time.Second); !ok {
		t.Fatalf("the sidecar did not get ready:\n%s", sc.Proxy.Output())
	}
	return sc
}
