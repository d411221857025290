package injector

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Report says what happened to one pod or pod template of a manifest.
type Report struct {
	Doc    int    // 1-based position of the document in the input
	Object string // "Deployment shop/web"
	Result Result
}

// podTemplatePaths says where each workload kind keeps its pod template.
// A Pod is its own template; kinds not listed pass through untouched.
var podTemplatePaths = map[string][]string{
	"Pod":                   {},
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// Manifests injects every pod and pod template in the YAML or JSON
// documents of r (multi-document YAML, and kind: List) and writes all the
// documents to w as YAML: the injected ones re-encoded, the others as they
// were. Pod templates are injected with the same patch the webhook would
// send, as if their namespace asked for injection (the user asked, by
// running this). Nothing is written unless every document is valid: the
// error names the document and the object.
func Manifests(r io.Reader, w io.Writer, cfg *Config) ([]Report, error) {
	reports, err := manifests(r, w, cfg)
	return reports, prefixed(err)
}

func manifests(r io.Reader, w io.Writer, cfg *Config) ([]Report, error) {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var (
		out     bytes.Buffer
		reports []Report
	)
	for n := 1; ; n++ {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			n--
			continue
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		var obj map[string]any
		if err := json.Unmarshal(js, &obj); err != nil {
			return nil, fmt.Errorf("document %d: not an object: %w", n, err)
		}
		changed, reps, err := injectObject(obj, n, "", cfg)
		if err != nil {
			return nil, err
		}
		reports = append(reports, reps...)
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		if !changed {
			out.Write(bytes.TrimLeft(doc, "\n"))
			if !bytes.HasSuffix(doc, []byte("\n")) {
				out.WriteByte('\n')
			}
			continue
		}
		y, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		out.Write(y)
	}
	_, err := w.Write(out.Bytes())
	return reports, err
}

// injectObject injects obj's pod template, or each item of a List, in
// place; it reports whether anything changed.
func injectObject(obj map[string]any, doc int, parentNS string, cfg *Config) (bool, []Report, error) {
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	if ns == "" {
		ns = parentNS
	}
	if strings.HasSuffix(kind, "List") { // List, PodList, DeploymentList…
		items, _ := obj["items"].([]any)
		changed := false
		var reports []Report
		for _, it := range items {
			item, ok := it.(map[string]any)
			if !ok {
				continue
			}
			c, reps, err := injectObject(item, doc, ns, cfg)
			if err != nil {
				return false, nil, err
			}
			changed = changed || c
			reports = append(reports, reps...)
		}
		return changed, reports, nil
	}
	path, ok := podTemplatePaths[kind]
	if !ok {
		return false, nil, nil
	}
	what := kind + " " + name
	if ns != "" {
		what = kind + " " + ns + "/" + name
	}
	tmpl := obj
	for _, k := range path {
		next, ok := tmpl[k].(map[string]any)
		if !ok {
			return false, nil, fmt.Errorf("document %d (%s): no %s", doc, what, strings.Join(path, "."))
		}
		tmpl = next
	}
	podMeta := map[string]any{}
	if m, ok := tmpl["metadata"].(map[string]any); ok {
		podMeta = maps.Clone(m)
	}
	// The workload's pods will be named after it: the injector names the
	// workload (workload.go) from the generateName it sees.
	named := false
	if _, ok := podMeta["generateName"]; !ok && name != "" {
		podMeta["generateName"], named = name+"-", true
	}
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": podMeta, "spec": tmpl["spec"]}
	raw, err := json.Marshal(pod)
	if err != nil {
		return false, nil, fmt.Errorf("document %d (%s): %w", doc, what, err)
	}
	patch, res, err := patchPod(raw, Namespace{Name: ns, InjectionEnabled: true}, cfg)
	if err != nil {
		return false, nil, fmt.Errorf("document %d (%s): %w", doc, what, err)
	}
	report := Report{Doc: doc, Object: what, Result: res}
	if patch == nil {
		return false, []Report{report}, nil
	}
	injected, err := applyPatch(raw, patch)
	if err != nil {
		return false, nil, fmt.Errorf("document %d (%s): %w", doc, what, err)
	}
	var ip map[string]any
	if err := json.Unmarshal(injected, &ip); err != nil {
		return false, nil, fmt.Errorf("document %d (%s): %w", doc, what, err)
	}
	if m, ok := ip["metadata"].(map[string]any); ok && named {
		delete(m, "generateName")
		if len(m) == 0 && tmpl["metadata"] == nil {
			ip["metadata"] = nil
		}
	}
	tmpl["metadata"], tmpl["spec"] = ip["metadata"], ip["spec"]
	return true, []Report{report}, nil
}

// ApplyPatch applies a JSON patch from Patch to the JSON document doc.
func ApplyPatch(doc, patch []byte) ([]byte, error) {
	out, err := applyPatch(doc, patch)
	return out, prefixed(err)
}

func applyPatch(doc, patch []byte) ([]byte, error) {
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		return nil, fmt.Errorf("decode patch: %w", err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		return nil, fmt.Errorf("apply patch: %w", err)
	}
	return out, nil
}

// stripComments drops YAML comment lines, so that a document holding only
// comments counts as empty.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
