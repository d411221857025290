package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The webhook's two paths. The MutatingWebhookConfiguration has one entry
// per path, and the API server's namespaceSelector decides which is
// called: NamespacePath for namespaces labelled pillion.io/inject=enabled,
// PodPath for the others, where only pods that ask are injected.
const (
	NamespacePath = "/inject/namespace"
	PodPath       = "/inject/pod"
)

// MaxReviewBytes bounds an AdmissionReview's body. The API server's own
// request limit is 3 MiB; a review carries the object and, on updates, the
// old one.
const MaxReviewBytes = 8 << 20

// Webhook answers admission.k8s.io/v1 AdmissionReviews for pods. It never
// calls the API server. It is safe for concurrent use.
type Webhook struct {
	cfg     atomic.Pointer[Config]
	log     *zap.Logger
	reviews *prometheus.CounterVec
	latency prometheus.Histogram
}

// NewWebhook returns a webhook injecting with cfg, logging to log and
// registering its metrics on reg.
func NewWebhook(cfg *Config, log *zap.Logger, reg prometheus.Registerer) (*Webhook, error) {
	w := &Webhook{
		log: log,
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pillion_injector_reviews_total",
			Help: "AdmissionReviews answered, by result (injected, skipped, denied, invalid) and reason.",
		}, []string{"result", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pillion_injector_review_duration_seconds",
			Help:    "Time to answer one AdmissionReview.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	w.cfg.Store(cfg)
	for _, c := range []prometheus.Collector{w.reviews, w.latency} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("injector: metrics: %w", err)
		}
	}
	return w, nil
}

// SetConfig makes later reviews inject with cfg; reviews in flight finish
// with the config they started with.
func (w *Webhook) SetConfig(cfg *Config) { w.cfg.Store(cfg) }

// Handler serves NamespacePath and PodPath.
func (w *Webhook) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(NamespacePath, w.serve(true))
	mux.Handle(PodPath, w.serve(false))
	return mux
}

// Outcomes of a review, the "result" label.
const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultDenied   = "denied"  // the pod was refused: a bad annotation, a reserved name
	resultInvalid  = "invalid" // the review itself was malformed: HTTP 400
	resultIgnored  = "ignored" // not a pod creation: allowed unchanged
)

func (w *Webhook) serve(nsEnabled bool) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() { w.latency.Observe(time.Since(start).Seconds()) }()
		review, status, err := readReview(rw, r)
		if err != nil {
			w.reviews.WithLabelValues(resultInvalid, "").Inc()
			w.log.Warn("malformed admission review", zap.String("remote", r.RemoteAddr), zap.Error(err))
			http.Error(rw, err.Error(), status)
			return
		}
		resp, result, reason := w.review(review.Request, nsEnabled)
		w.reviews.WithLabelValues(result, reason).Inc()
		req := review.Request
		w.log.Info("admission",
			zap.String("uid", string(req.UID)), zap.String("namespace", req.Namespace),
			zap.String("name", podName(req)), zap.String("operation", string(req.Operation)),
			zap.Bool("namespace_enabled", nsEnabled), zap.String("result", result),
			zap.String("reason", reason), zap.Duration("took", time.Since(start)))
		out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
		rw.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(rw).Encode(&out); err != nil {
			w.log.Warn("write admission response", zap.Error(err))
		}
	})
}

// readReview decodes and checks the request's AdmissionReview. The error
// says what is wrong, with the HTTP status to answer.
func readReview(rw http.ResponseWriter, r *http.Request) (*admissionv1.AdmissionReview, int, error) {
	if r.Method != http.MethodPost {
		return nil, http.StatusMethodNotAllowed, fmt.Errorf("method %s: an AdmissionReview is POSTed", r.Method)
	}
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: want application/json", r.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, MaxReviewBytes))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("AdmissionReview larger than %d bytes", MaxReviewBytes)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("read AdmissionReview: %w", err)
	}
	review, err := decodeReview(body)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	return review, http.StatusOK, nil
}

// decodeReview decodes body as an admission.k8s.io/v1 AdmissionReview
// carrying a request.
func decodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, fmt.Errorf("malformed AdmissionReview: %w", err)
	}
	if gvk := review.GroupVersionKind(); gvk.Group != "admission.k8s.io" || gvk.Version != "v1" || gvk.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("malformed AdmissionReview: apiVersion %q, kind %q: want admission.k8s.io/v1 AdmissionReview", review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, errors.New("malformed AdmissionReview: no request")
	}
	if review.Request.UID == "" {
		return nil, errors.New("malformed AdmissionReview: request.uid is empty")
	}
	return &review, nil
}

// review decides one admission request.
func (w *Webhook) review(req *admissionv1.AdmissionRequest, nsEnabled bool) (*admissionv1.AdmissionResponse, string, string) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Resource.Group != "" || req.Resource.Resource != "pods" || req.SubResource != "" {
		// A webhook configuration that sends more than pods: let the
		// object through untouched rather than block it.
		resp.Warnings = []string{fmt.Sprintf("pillion injector: %s is not a pod; left unchanged", req.Resource.String())}
		return resp, resultIgnored, "not_a_pod"
	}
	if req.Operation != admissionv1.Create {
		return resp, resultIgnored, "not_create"
	}
	ns := Namespace{Name: req.Namespace, InjectionEnabled: nsEnabled}
	patch, res, err := patchPod(req.Object.Raw, ns, w.cfg.Load())
	if err != nil {
		resp.Allowed = false
		resp.Result = &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    http.StatusBadRequest,
			Reason:  metav1.StatusReasonBadRequest,
			Message: "pillion sidecar injection: " + err.Error(),
		}
		return resp, resultDenied, ""
	}
	if res.Skipped != "" {
		return resp, resultSkipped, string(res.Skipped)
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp, resultInjected, ""
}

// podName names the pod in logs: its name, or its generateName prefix for
// pods created by controllers.
func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if json.Unmarshal(req.Object.Raw, &meta) == nil && meta.Metadata.GenerateName != "" {
		return meta.Metadata.GenerateName + "*"
	}
	return ""
}
