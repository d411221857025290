package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the code's output")

// goldenCases are the plans checked against testdata/<name>.golden.
func goldenCases() []struct {
	name   string
	flags  func(*Flags)
	family Family
} {
	mixed := func(f *Flags) {
		f.ExcludeOutboundIPRanges = "10.0.0.0/8, 2001:db8::/32,169.254.169.254,fd00::1"
	}
	return []struct {
		name   string
		flags  func(*Flags)
		family Family
	}{
		{"defaults-v4", func(*Flags) {}, IPv4},
		{"defaults-v6", func(*Flags) {}, IPv6},
		{"exclude-inbound-ports", func(f *Flags) { f.ExcludeInboundPorts = "22,8081,15021" }, IPv4},
		{"exclude-inbound-all", func(f *Flags) { f.ExcludeInboundPorts = "*" }, IPv4},
		{"exclude-outbound-ports", func(f *Flags) { f.ExcludeOutboundPorts = "5432, 3306" }, IPv4},
		{"exclude-outbound-all", func(f *Flags) { f.ExcludeOutboundIPRanges = "*" }, IPv4},
		{"exclude-ranges-v4", mixed, IPv4},
		{"exclude-ranges-v6", mixed, IPv6},
		{"include-list", func(f *Flags) { f.IncludeInboundPorts = "9080,8080" }, IPv4},
		{"include-none", func(f *Flags) { f.IncludeInboundPorts = "" }, IPv4},
		{"custom-ports-ids", func(f *Flags) {
			f.OutboundPort, f.InboundPort, f.ProxyUID, f.ProxyGID = "7001", "7006", "2000", "3000"
		}, IPv6},
	}
}

func TestPlanGolden(t *testing.T) {
	used := map[string]bool{}
	check := func(t *testing.T, name, got string) {
		t.Helper()
		path := filepath.Join("testdata", name+".golden")
		used[path] = true
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./redirect -run TestPlanGolden -update to create it)", err)
		}
		if diff := cmp.Diff(string(want), got); diff != "" {
			t.Errorf("%s differs (-want +got):\n%s", path, diff)
		}
	}
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			f := DefaultFlags()
			tc.flags(&f)
			cfg, err := f.Config()
			if err != nil {
				t.Fatal(err)
			}
			check(t, tc.name, NewPlan(cfg, tc.family).Save())
		})
	}
	t.Run("cleanup-v4", func(t *testing.T) {
		check(t, "cleanup-v4", NewPlan(defaultConfig(), IPv4).CleanupScript())
	})

	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !used[f] && !*update {
			t.Errorf("%s is not used by any test case: delete it", f)
		}
	}
}

// TestPlanInvariants checks what must hold for every plan, whatever the
// flags: every rule is commented, quoting survives, chains are fixed.
func TestPlanInvariants(t *testing.T) {
	for _, tc := range goldenCases() {
		f := DefaultFlags()
		tc.flags(&f)
		cfg, err := f.Config()
		if err != nil {
			t.Fatal(err)
		}
		p := NewPlan(cfg, tc.family)
		if diff := cmp.Diff([]string{ChainInbound, ChainInRedirect, ChainOutput, ChainOutRedirect}, p.Chains); diff != "" {
			t.Errorf("%s: chains (-want +got):\n%s", tc.name, diff)
		}
		if diff := cmp.Diff([]string{"PREROUTING", "OUTPUT"}, p.hookedChains()); diff != "" {
			t.Errorf("%s: hooked chains (-want +got):\n%s", tc.name, diff)
		}
		for i, r := range p.Rules {
			if !strings.HasPrefix(r.Comment, CommentPrefix) {
				t.Errorf("%s: rule %d %q: comment does not start with %q", tc.name, i, r, CommentPrefix)
			}
			args, err := splitRule(r.String())
			if err != nil {
				t.Fatalf("%s: splitRule(%q): %v", tc.name, r, err)
			}
			if diff := cmp.Diff(append([]string{"-A", r.Chain}, r.Spec()...), args); diff != "" {
				t.Errorf("%s: rule %d text does not split back into its spec (-want +got):\n%s", tc.name, i, diff)
			}
			lr := listedRule{text: r.String(), spec: args[2:]}
			if !lr.pillions() {
				t.Errorf("%s: rule %q is not recognised as pillion's", tc.name, r)
			}
		}
		// Hooks come last, so capture starts only once the chains are full.
		hooks := slices.IndexFunc(p.Rules, func(r Rule) bool { return !p.owns(r.Chain) })
		if hooks != len(p.Rules)-2 {
			t.Errorf("%s: the jumps from built-in chains are not the last two rules", tc.name)
		}
	}
}

func TestQuoteSplit(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A OUTPUT -j RETURN`, []string{"-A", "OUTPUT", "-j", "RETURN"}},
		{`-A X -m comment --comment "pillion: a b" -j RETURN`,
			[]string{"-A", "X", "-m", "comment", "--comment", "pillion: a b", "-j", "RETURN"}},
		{`-A X --comment "q\"uo\\te" -j R`, []string{"-A", "X", "--comment", `q"uo\te`, "-j", "R"}},
		{`-A X --comment "" -j R`, []string{"-A", "X", "--comment", "", "-j", "R"}},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.line)
		if err != nil {
			t.Errorf("splitRule(%q): %v", tt.line, err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("splitRule(%q) (-want +got):\n%s", tt.line, diff)
		}
	}
	if _, err := splitRule(`-A X --comment "open`); err == nil {
		t.Error("splitRule accepted an unterminated quote")
	}
	for _, s := range []string{"nospace", "pillion: x", `q"uo\te`, "it's", ""} {
		got, err := splitRule("--comment " + quote(s))
		if err != nil || len(got) != 2 || got[1] != s {
			t.Errorf("quote(%q) = %s does not split back: %q, %v", s, quote(s), got, err)
		}
	}
	if quote("nospace") != "nospace" || quote("pillion: x") != `"pillion: x"` {
		t.Errorf("quote does not match iptables-save: %s %s", quote("nospace"), quote("pillion: x"))
	}
}

func TestNormalizeSave(t *testing.T) {
	in := "# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 05:56:37 2026\n" +
		"*nat\n:PREROUTING ACCEPT [12:720]\n:PILLION_INBOUND - [0:0]\n" +
		"[3:180] -A PREROUTING -p tcp -j PILLION_INBOUND\nCOMMIT\n# Completed on Sat Nov 21 05:56:37 2026"
	want := "*nat\n:PREROUTING ACCEPT [0:0]\n:PILLION_INBOUND - [0:0]\n-A PREROUTING -p tcp -j PILLION_INBOUND\nCOMMIT\n"
	if diff := cmp.Diff(want, NormalizeSave(in)); diff != "" {
		t.Errorf("NormalizeSave (-want +got):\n%s", diff)
	}
}

func TestReportString(t *testing.T) {
	tests := []struct {
		r    Report
		want string
	}{
		{Report{Family: IPv4, Outcome: Installed, ChainsAdded: 4, RulesAdded: 14}, "IPv4: installed 4 chains and 14 rules"},
		{Report{Family: IPv6, Outcome: Replaced, ChainsAdded: 4, RulesAdded: 14, ChainsRemoved: 4, RulesRemoved: 16},
			"IPv6: replaced a different pillion install: removed 4 chains and 16 rules, installed 4 chains and 14 rules"},
		{Report{Family: IPv4, Outcome: Unchanged}, "IPv4: already installed, nothing changed"},
		{Report{Family: IPv4, Outcome: Removed, ChainsRemoved: 4, RulesRemoved: 14}, "IPv4: removed 4 chains and 14 rules"},
		{Report{Family: IPv6, Outcome: NotInstalled}, "IPv6: nothing installed, nothing changed"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestInboundSourceFor(t *testing.T) {
	for dst, want := range map[string]string{
		"198.18.0.3":        "127.0.0.6",
		"::ffff:198.18.0.3": "127.0.0.6", // dialled as IPv4
		"fd00:ca7::3":       "::6",
		"127.0.0.1":         "invalid IP", // loopback is dialled as it is
		"::ffff:127.0.0.1":  "invalid IP",
		"::1":               "invalid IP",
	} {
		if got := InboundSourceFor(netip.MustParseAddr(dst)).String(); got != want {
			t.Errorf("InboundSourceFor(%s) = %s, want %s", dst, got, want)
		}
	}
}
