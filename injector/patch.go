package injector

import (
	"encoding/json"
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// Patch injects the pod encoded in raw (JSON, as an AdmissionReview
// carries it) and returns the RFC 6902 JSON patch that turns raw into the
// injected pod: nil when the pod is skipped. The patch is the difference
// between raw and the injected pod as this version of the Pod type encodes
// it (as controller-runtime's webhooks compute theirs): a field newer than
// k8s.io/api would be removed, so the injector must be built with a Pod
// type at least as new as the cluster's.
func Patch(raw []byte, ns Namespace, cfg *Config) ([]byte, Result, error) {
	patch, res, err := patchPod(raw, ns, cfg)
	return patch, res, prefixed(err)
}

func patchPod(raw []byte, ns Namespace, cfg *Config) ([]byte, Result, error) {
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		return nil, Result{}, fmt.Errorf("decode pod: %w", err)
	}
	res, err := inject(&pod, ns, cfg)
	if err != nil || res.Pod == nil {
		return nil, res, err
	}
	after, err := encodeLike(res.Pod, raw)
	if err != nil {
		return nil, Result{}, fmt.Errorf("encode injected pod: %w", err)
	}
	ops, err := jsonpatch.CreatePatch(raw, after)
	if err != nil {
		return nil, Result{}, fmt.Errorf("diff injected pod: %w", err)
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, Result{}, fmt.Errorf("encode patch: %w", err)
	}
	return patch, res, nil
}

// encodeLike encodes pod, leaving out the empty creationTimestamp and
// status the Pod type always writes when raw has neither, so that the
// patch holds only what injection changed.
func encodeLike(pod *corev1.Pod, raw []byte) ([]byte, error) {
	js, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	var in, out map[string]any
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(js, &out); err != nil {
		return nil, err
	}
	if st, ok := out["status"].(map[string]any); ok && len(st) == 0 && in["status"] == nil {
		delete(out, "status")
	}
	inMeta, _ := in["metadata"].(map[string]any)
	if meta, ok := out["metadata"].(map[string]any); ok && meta["creationTimestamp"] == nil {
		if _, had := inMeta["creationTimestamp"]; !had {
			delete(meta, "creationTimestamp")
		}
	}
	return json.Marshal(out)
}
