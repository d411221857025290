package injector

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/inject/*.injected from the injector's output")

const goldenDir = "testdata/inject"

// goldenCase is testdata/inject/<name>.yaml, injected with config.yaml or
// <name>.config.yaml, compared with <name>.injected.
type goldenCase struct {
	name, input, config, golden string
}

// goldenCases lists the cases and fails on any file in the folder that no
// case uses: a golden file whose input was deleted or renamed.
func goldenCases(t *testing.T) []goldenCase {
	t.Helper()
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	used := map[string]bool{"config.yaml": true}
	var cases []goldenCase
	for _, f := range files {
		name, ok := strings.CutSuffix(f, ".yaml")
		if !ok || f == "config.yaml" || strings.HasSuffix(name, ".config") {
			continue
		}
		c := goldenCase{name: name, input: f, config: "config.yaml", golden: name + ".injected"}
		if slices.Contains(files, name+".config.yaml") {
			c.config = name + ".config.yaml"
		}
		used[c.input], used[c.config], used[c.golden] = true, true, true
		cases = append(cases, c)
	}
	if !*update {
		for _, f := range files {
			if !used[f] {
				t.Errorf("%s/%s belongs to no case (no %s input): delete it or add the input", goldenDir, f, strings.SplitN(f, ".", 2)[0]+".yaml")
			}
		}
	}
	if len(cases) < 15 {
		t.Fatalf("found %d cases in %s; the folder lost its inputs", len(cases), goldenDir)
	}
	return cases
}

func loadTestConfig(t testing.TB, file string) *Config {
	t.Helper()
	cfg, err := LoadConfig(filepath.Join(goldenDir, file))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func injectFile(t *testing.T, in []byte, cfg *Config) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := Manifests(bytes.NewReader(in), &out, cfg); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestGolden injects each case and compares with its golden file, then
// injects the result again and expects no change.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases(t) {
		t.Run(c.name, func(t *testing.T) {
			cfg := loadTestConfig(t, c.config)
			in, err := os.ReadFile(filepath.Join(goldenDir, c.input))
			if err != nil {
				t.Fatal(err)
			}
			got := injectFile(t, in, cfg)
			goldenPath := filepath.Join(goldenDir, c.golden)
			if *update {
				if err := os.WriteFile(goldenPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(goldenPath)
			if err != nil {
				t.Fatalf("%v (run go test ./injector -run TestGolden -update, then read the diff)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s differs (-golden +got):\n%s", c.golden, diff)
			}
			if again := injectFile(t, got, cfg); !bytes.Equal(again, got) {
				t.Errorf("injecting twice changed the result:\n%s", cmp.Diff(string(got), string(again)))
			}
		})
	}
}
