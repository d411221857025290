package kubetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// controllerManagerArgs are the flags StartControllerManager runs
// kube-controller-manager with. Only the two EndpointSlice controllers run:
// no service-account tokens, no namespace deletion (a deleted Namespace
// stays Terminating), no garbage collection.
func controllerManagerArgs(kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=endpointslice,endpointslicemirroring",
		"--leader-elect=false",
		"--secure-port=0", // serves nothing: no port to pick, none to collide
		"--use-service-account-credentials=false",
		// No batching of pod changes: 0s is today's default, set so that a
		// later default cannot slow every test.
		"--endpointslice-updates-batch-period=0s",
	}
}

// probeService is the headless Service StartControllerManager creates in
// kube-system and waits on: its EndpointSlice shows that the controller
// runs. It is deleted before StartControllerManager returns.
const probeService = "kubetest-controller-probe"

// logTail is how much of kube-controller-manager's log a failed test prints.
const logTail = 16 << 10

// StartCluster is Start followed by StartControllerManager: an API server
// whose Services get EndpointSlices. It checks for kube-controller-manager
// before starting anything, so a test without it skips (or fails, under
// CI=true) at once.
func StartCluster(t testing.TB, crdDirs ...string) *Env {
	t.Helper()
	needControllerManager(t, assets(t))
	e := Start(t, crdDirs...)
	e.StartControllerManager(t)
	return e
}

// needControllerManager skips t (fails it under CI=true) unless dir holds
// kube-controller-manager, and returns its path.
func needControllerManager(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "kube-controller-manager")
	need(t, "kube-controller-manager in "+dir+": build it with `make kube` (about a minute more once kube-apiserver is built)", bin)
	return bin
}

// StartControllerManager runs kube-controller-manager from the folder of
// kube-apiserver, as an admin, with its two EndpointSlice controllers only, and returns once
// its EndpointSlice controller has made a slice for a probe Service, or
// fails t after 60 seconds. It is stopped when t ends, before the API
// server (t.Cleanup runs last-registered first; t must be Start's test or
// one of its subtests). Its log is kept and printed, the last 16 KiB of it,
// only if t failed. Without the binary it skips t with how to build it, or
// fails it under CI=true.
func (e *Env) StartControllerManager(t testing.TB) {
	t.Helper()
	bin := needControllerManager(t, e.assets)
	kubeconfig := e.Kubeconfig(t)
	log := &tailBuffer{max: 1 << 20}
	cmd := exec.Command(bin, controllerManagerArgs(kubeconfig)...)
	cmd.Stdout, cmd.Stderr = log, log
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("kubetest: start kube-controller-manager: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		stopProcess(cmd, exited)
		if t.Failed() {
			t.Logf("kubetest: kube-controller-manager's log, last %d bytes:\n%s", logTail, log.Tail(logTail))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() { // stop waiting at once if the process dies
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := e.probeControllers(ctx); err != nil {
		select {
		case <-exited:
			t.Fatalf("kubetest: kube-controller-manager exited: %v", waitErr)
		default:
		}
		t.Fatalf("kubetest: kube-controller-manager: %v", err)
	}
	t.Logf("kubetest: kube-controller-manager's EndpointSlice controller answered in %v", time.Since(start).Round(time.Millisecond))
}

// probeControllers creates the probe Service, waits for its EndpointSlice
// and deletes it again.
func (e *Env) probeControllers(ctx context.Context) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: probeService, Namespace: metav1.NamespaceSystem},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone, // takes no address from ServiceCIDR
			Selector:  map[string]string{"kubetest.pillion.dev/probe": "none"},
			Ports:     []corev1.ServicePort{{Name: "probe", Port: 1}},
		},
	}
	services := e.Client.CoreV1().Services(metav1.NamespaceSystem)
	if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create probe service: %w", err)
	}
	_, werr := e.WaitEndpoints(ctx, metav1.NamespaceSystem, probeService, func(s []discoveryv1.EndpointSlice) bool { return len(s) > 0 })
	// The slice goes with the Service: it is owned by it, and the
	// controller deletes slices whose Service is gone.
	derr := services.Delete(context.WithoutCancel(ctx), probeService, metav1.DeleteOptions{})
	if werr != nil {
		return fmt.Errorf("no EndpointSlice for a probe service: %w", werr)
	}
	if derr != nil {
		return fmt.Errorf("delete probe service: %w", derr)
	}
	return nil
}

// stopProcess sends SIGTERM, then SIGKILL after 10 seconds, and waits for
// the process to exit.
func stopProcess(cmd *exec.Cmd, exited <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Kubeconfig writes a kubeconfig for an admin (a user in group
// system:masters) into a new file under t.TempDir() and returns its path,
// for another process (kube-controller-manager, `pillion discovery`). The
// file and its folder can be read by every user, so that a process running
// as the proxy's user can use it too: it holds a client key, but only for
// this throw-away API server on 127.0.0.1.
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	data, err := e.adminKubeconfig()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("kubetest: write kubeconfig: %v", err)
	}
	return path
}

// adminKubeconfig adds the admin user on first use.
func (e *Env) adminKubeconfig() ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.admin != nil {
		return e.admin, nil
	}
	u, err := e.te.AddUser(envtest.User{Name: "pillion-test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("add admin user: %w", err)
	}
	data, err := u.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	e.admin = data
	return data, nil
}

// tailBuffer keeps the last max bytes written to it (at least; it trims in
// steps). It is safe for concurrent use.
type tailBuffer struct {
	max int

	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

// Tail is the last n bytes written, from the start of a line when there is
// one in them.
func (b *tailBuffer) Tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) <= n {
		return string(b.buf)
	}
	s := string(b.buf[len(b.buf)-n:])
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		s = s[i+1:]
	}
	return s
}
