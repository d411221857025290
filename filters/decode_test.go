package filters_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pillionmesh/pillion/filters"
)

type inner struct {
	Name string `json:"name"`
}

// own decodes itself, as authz's rules do, with errors at its own paths.
type own struct{ v string }

func (o *own) UnmarshalJSON(b []byte) error {
	if filters.KindOf(b) != "string" {
		return filters.Invalid("x", "want a string, got %s", filters.KindOf(b))
	}
	o.v = string(b)
	return nil
}

type Embedded struct {
	Shared int `json:"shared"`
}

type sample struct {
	Embedded
	Count    int               `json:"count"`
	Ratio    *float64          `json:"ratio"`
	On       bool              `json:"on"`
	Wait     filters.Duration  `json:"wait"`
	Items    []inner           `json:"items"`
	Labels   map[string]string `json:"labels"`
	Own      []own             `json:"own"`
	Skipped  string            `json:"-"`
	Untagged string
	//lint:ignore U1000 an unexported field is never decoded, as TestDecodeStrictErrors checks
	hidden string
}

func TestDecodeStrict(t *testing.T) {
	half := 0.5
	var got sample
	in := `{"shared": 1, "count": 2, "ratio": 0.5, "on": true, "wait": "2s", "items": [{"name": "a"}],
		"labels": {"k": "v"}, "own": ["o"], "Untagged": "u"}`
	if err := filters.DecodeStrict([]byte(in), &got, "top"); err != nil {
		t.Fatal(err)
	}
	want := sample{Embedded: Embedded{1}, Count: 2, Ratio: &half, On: true, Wait: filters.Duration(2 * time.Second),
		Items: []inner{{"a"}}, Labels: map[string]string{"k": "v"}, Own: []own{{`"o"`}}, Untagged: "u"}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(own{}, sample{})); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}

	// null empties lists, mappings and pointers, and leaves scalars as
	// they are, as encoding/json; empty data and null change nothing.
	if err := filters.DecodeStrict([]byte(`{"ratio": null, "items": null, "labels": null, "count": null}`), &got, ""); err != nil {
		t.Fatal(err)
	}
	if got.Ratio != nil || got.Items != nil || got.Labels != nil || got.Count != 2 {
		t.Errorf("after nulls: %+v", got)
	}
	// Keys match their field regardless of case, as encoding/json's do
	// (an exact match first): configs that loaded before DecodeStrict
	// still load.
	var folded sample
	if err := filters.DecodeStrict([]byte(`{"Count": 3, "ON": true}`), &folded, ""); err != nil || folded.Count != 3 || !folded.On {
		t.Errorf("keys in another case: %v, %+v; want count 3, on true", err, folded)
	}
	for _, data := range []string{"", " null "} {
		if err := filters.DecodeStrict([]byte(data), &got, ""); err != nil || got.Count != 2 {
			t.Errorf("DecodeStrict(%q) = %v, %+v; want nothing changed", data, err, got)
		}
	}
}

func TestDecodeStrictErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`{"cuont": 1}`, "top.cuont: unknown field (known: shared, count, ratio, on, wait, items, labels, own, Untagged)"},
		{`{"-": 1}`, "top.-: unknown field (known: shared, count, ratio, on, wait, items, labels, own, Untagged)"},
		{`{"hidden": "x"}`, "top.hidden: unknown field (known: shared, count, ratio, on, wait, items, labels, own, Untagged)"},
		{`{"items": [{"name": "a"}, {"nmae": "b"}]}`, "top.items[1].nmae: unknown field (known: name)"},
		{`{"items": {"name": "a"}}`, "top.items: want a list, got mapping"},
		{`{"labels": ["a"]}`, "top.labels: want a mapping, got list"},
		{`{"labels": {"k": 1}}`, "top.labels.k: want a string, got number"},
		{`{"count": "2"}`, "top.count: want a whole number, got string"},
		{`{"count": 2.5}`, "top.count: want a whole number, got 2.5"},
		{`{"count": 1e30}`, "top.count: want a whole number, got 1e30"},
		{`{"ratio": true}`, "top.ratio: want a number, got bool"},
		{`{"on": "yes"}`, "top.on: want a boolean, got string"},
		{`{"wait": 5}`, `top.wait: want a duration such as "250ms" or "15s", got 5`},
		{`{"wait": "5sec"}`, `top.wait: want a duration such as "250ms" or "15s", got "5sec"`},
		{`{"own": ["a", 1]}`, "top.own[1].x: want a string, got number"},
		{`[]`, "top: want a mapping, got list"},
		{`{"count": 1} {}`, "top: invalid character '{' after top-level value"},
		{`{"count": }`, "top: invalid character '}' looking for beginning of value"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			var got sample
			err := filters.DecodeStrict([]byte(tt.in), &got, "top")
			if err == nil || err.Error() != tt.want {
				t.Errorf("DecodeStrict = %v\nwant %s", err, tt.want)
			}
			if fe := (*filters.FieldError)(nil); err != nil && !errors.As(err, &fe) {
				t.Errorf("error is a %T, want a *filters.FieldError", err)
			}
		})
	}
	if err := filters.DecodeStrict([]byte(`{}`), sample{}, ""); err == nil {
		t.Error("DecodeStrict into a struct, not a pointer: no error")
	}
}

// FuzzDecodeStrict: DecodeStrict never panics, and what it accepts
// encoding/json accepts too.
func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{`{}`, `null`, `{"items": [{"name": "a"}], "labels": {"a": "b"}, "wait": "1s", "own": ["x"]}`,
		`{"count": 1e400}`, `[1, 2]`, `{"ratio": -0}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		var strict, loose sample
		if filters.DecodeStrict([]byte(data), &strict, "top") != nil {
			return
		}
		if err := json.Unmarshal([]byte(data), &loose); len(strings.TrimSpace(data)) > 0 && err != nil {
			t.Fatalf("DecodeStrict accepted %q, encoding/json did not: %v", data, err)
		}
	})
}

// A config is decoded strictly, its errors naming the field by its path.
func ExampleDecodeStrict() {
	var cfg struct {
		Attempts int              `json:"attempts"`
		Backoff  filters.Duration `json:"backoff"`
		On       []string         `json:"on"`
	}
	fmt.Println(filters.DecodeStrict([]byte(`{"attempts": 2, "backoff": "25ms", "on": ["5xx"]}`), &cfg, "retry"), cfg.Backoff.Std())
	fmt.Println(filters.DecodeStrict([]byte(`{"attempt": 2}`), &cfg, "retry"))
	fmt.Println(filters.DecodeStrict([]byte(`{"on": ["5xx", 503]}`), &cfg, "retry"))
	// Output:
	// <nil> 25ms
	// retry.attempt: unknown field (known: attempts, backoff, on)
	// retry.on[1]: want a string, got number
}
