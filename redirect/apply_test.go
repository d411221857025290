package redirect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// memTables is an in-memory nat table for tests that cannot use the
// kernel. Rules are kept as the text iptables -S prints.
type memTables struct {
	chains map[string][]string // chain → "-A ..." lines
	order  []string            // user chains, creation order
}

var _ Tables = (*memTables)(nil)

func newMemTables() *memTables {
	m := &memTables{chains: map[string][]string{}}
	for _, c := range builtinChains() {
		m.chains[c] = nil
	}
	return m
}

func (m *memTables) text(chain string, spec []string) string {
	parts := []string{"-A", chain}
	for i, a := range spec {
		if i > 0 && spec[i-1] == "--comment" {
			a = quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (m *memTables) ListChains(string) ([]string, error) {
	return append(builtinChains(), m.order...), nil
}

func (m *memTables) List(_, chain string) ([]string, error) {
	rules, ok := m.chains[chain]
	if !ok {
		return nil, fmt.Errorf("no chain %s", chain)
	}
	head := "-N " + chain
	if slices.Contains(builtinChains(), chain) {
		head = "-P " + chain + " ACCEPT"
	}
	return append([]string{head}, rules...), nil
}

func (m *memTables) NewChain(_, chain string) error {
	if _, ok := m.chains[chain]; ok {
		return fmt.Errorf("chain %s exists", chain)
	}
	m.chains[chain] = nil
	m.order = append(m.order, chain)
	return nil
}

func (m *memTables) ClearChain(_, chain string) error {
	m.chains[chain] = nil
	return nil
}

func (m *memTables) DeleteChain(_, chain string) error {
	if len(m.chains[chain]) > 0 {
		return fmt.Errorf("chain %s not empty", chain)
	}
	delete(m.chains, chain)
	m.order = slices.DeleteFunc(m.order, func(c string) bool { return c == chain })
	return nil
}

func (m *memTables) Append(_, chain string, spec ...string) error {
	return m.Insert("", chain, len(m.chains[chain])+1, spec...)
}

func (m *memTables) Insert(_, chain string, pos int, spec ...string) error {
	rules, ok := m.chains[chain]
	if !ok || pos < 1 || pos > len(rules)+1 {
		return fmt.Errorf("cannot insert into %s at %d", chain, pos)
	}
	m.chains[chain] = slices.Insert(rules, pos-1, m.text(chain, spec))
	return nil
}

func (m *memTables) Delete(_, chain string, spec ...string) error {
	i := slices.Index(m.chains[chain], m.text(chain, spec))
	if i < 0 {
		return fmt.Errorf("no such rule in %s", chain)
	}
	m.chains[chain] = slices.Delete(m.chains[chain], i, i+1)
	return nil
}

// dump is the whole table as text, for comparisons.
func (m *memTables) dump() string {
	var b strings.Builder
	for _, c := range append(builtinChains(), m.order...) {
		b.WriteString(":" + c + "\n")
		for _, r := range m.chains[c] {
			b.WriteString(r + "\n")
		}
	}
	return b.String()
}

// failing wraps Tables and makes one mutating call fail: the one whose
// number (counted from 1 over every failing sharing the counter) is failAt.
// With failUndo every mutating call after it fails too.
type failing struct {
	Tables
	calls    *int
	failAt   int
	failUndo bool
}

func (f failing) check(what string) error {
	*f.calls++
	if *f.calls == f.failAt || (f.failUndo && *f.calls > f.failAt) {
		return fmt.Errorf("call %d (%s) failed on purpose", *f.calls, what)
	}
	return nil
}

func (f failing) NewChain(t, c string) error {
	if err := f.check("new chain"); err != nil {
		return err
	}
	return f.Tables.NewChain(t, c)
}

func (f failing) ClearChain(t, c string) error {
	if err := f.check("flush"); err != nil {
		return err
	}
	return f.Tables.ClearChain(t, c)
}

func (f failing) DeleteChain(t, c string) error {
	if err := f.check("delete chain"); err != nil {
		return err
	}
	return f.Tables.DeleteChain(t, c)
}

func (f failing) Append(t, c string, s ...string) error {
	if err := f.check("append"); err != nil {
		return err
	}
	return f.Tables.Append(t, c, s...)
}

func (f failing) Insert(t, c string, p int, s ...string) error {
	if err := f.check("insert"); err != nil {
		return err
	}
	return f.Tables.Insert(t, c, p, s...)
}

func (f failing) Delete(t, c string, s ...string) error {
	if err := f.check("delete"); err != nil {
		return err
	}
	return f.Tables.Delete(t, c, s...)
}

func mustConfig(t *testing.T, edit func(*Flags)) Config {
	t.Helper()
	f := DefaultFlags()
	edit(&f)
	c, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestApplyInMemory(t *testing.T) {
	ctx := context.Background()
	m := newMemTables()
	_ = m.Append(Table, "OUTPUT", "-j", "RETURN")
	before := m.dump()
	p := NewPlan(defaultConfig(), IPv4)

	reps, err := Apply(ctx, Target{p, m})
	if err != nil {
		t.Fatal(err)
	}
	want := []Report{{Family: IPv4, Outcome: Installed, ChainsAdded: 4, RulesAdded: 15}}
	if diff := cmp.Diff(want, reps); diff != "" {
		t.Errorf("first Apply (-want +got):\n%s", diff)
	}
	if got := m.chains["OUTPUT"]; len(got) != 2 || got[0] != "-A OUTPUT -j RETURN" {
		t.Errorf("OUTPUT after Apply = %q, want the user rule first, then pillion's jump", got)
	}
	installed := m.dump()
	reps, err = Apply(ctx, Target{p, m})
	if err != nil || reps[0].Outcome != Unchanged || m.dump() != installed {
		t.Errorf("second Apply = %v, %v, changed=%v; want Unchanged, no change", reps, err, m.dump() != installed)
	}

	other := NewPlan(mustConfig(t, func(f *Flags) { f.ExcludeOutboundPorts = "22,25" }), IPv4)
	reps, err = Apply(ctx, Target{other, m})
	want = []Report{{Family: IPv4, Outcome: Replaced, ChainsAdded: 4, RulesAdded: 17, ChainsRemoved: 4, RulesRemoved: 15}}
	if diff := cmp.Diff(want, reps); err != nil || diff != "" {
		t.Errorf("Apply with other flags: %v (-want +got):\n%s", err, diff)
	}

	reps, err = Cleanup(ctx, Target{p, m})
	want = []Report{{Family: IPv4, Outcome: Removed, ChainsRemoved: 4, RulesRemoved: 17}}
	if diff := cmp.Diff(want, reps); err != nil || diff != "" {
		t.Errorf("Cleanup: %v (-want +got):\n%s", err, diff)
	}
	if diff := cmp.Diff(before, m.dump()); diff != "" {
		t.Errorf("Cleanup did not restore the tables (-before +after):\n%s", diff)
	}
	reps, err = Cleanup(ctx, Target{p, m})
	if err != nil || reps[0].Outcome != NotInstalled {
		t.Errorf("second Cleanup = %v, %v; want NotInstalled", reps, err)
	}
}

func TestApplyErrors(t *testing.T) {
	p4, p6 := NewPlan(defaultConfig(), IPv4), NewPlan(defaultConfig(), IPv6)
	tests := []struct {
		name     string
		failAt   int
		failUndo bool
		want     string
	}{
		{"first step", 1, false,
			"redirect: IPv4: create chain PILLION_INBOUND: call 1 (new chain) failed on purpose (this run's changes were undone)"},
		{"IPv6 fails after IPv4 succeeded", 19 + 5, false,
			`redirect: IPv6: add rule -A PILLION_INBOUND -p tcp -m tcp --dport 15000 -m comment --comment "pillion: sidecar admin port" -j RETURN: ` +
				"call 24 (append) failed on purpose (this run's changes were undone)"},
		{"undo fails too", 3, true,
			"redirect: IPv4: create chain PILLION_OUTPUT: call 3 (new chain) failed on purpose; " +
				"undoing this run's changes failed too, pillion's rules may be half-installed (run pillion init --cleanup): " +
				"IPv4: undo create chain PILLION_IN_REDIRECT: call 4 (delete chain) failed on purpose\n" +
				"undo create chain PILLION_INBOUND: call 5 (delete chain) failed on purpose"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m4, m6 := newMemTables(), newMemTables()
			before4, before6 := m4.dump(), m6.dump()
			calls := 0
			_, err := Apply(context.Background(),
				Target{p4, failing{m4, &calls, tt.failAt, tt.failUndo}},
				Target{p6, failing{m6, &calls, tt.failAt, tt.failUndo}})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Apply error:\n got: %v\nwant: %s", err, tt.want)
			}
			if !tt.failUndo && (m4.dump() != before4 || m6.dump() != before6) {
				t.Errorf("tables not restored:\nIPv4:\n%s\nIPv6:\n%s", m4.dump(), m6.dump())
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Apply(ctx, Target{p4, newMemTables()})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Apply with a cancelled context = %v, want context.Canceled", err)
		}
	})
}
