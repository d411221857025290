package redirect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Target is one family's plan and the tables it is applied to.
type Target struct {
	Plan   Plan
	Tables Tables
}

// Outcome says what Apply or Cleanup did to one family's tables.
type Outcome int

// Outcomes of Apply (Installed, Replaced, Unchanged) and of Cleanup
// (Removed, NotInstalled).
const (
	Installed    Outcome = iota + 1 // nothing of pillion's was there; the plan is installed
	Replaced                        // a different pillion install was removed, the plan installed
	Unchanged                       // the plan was installed exactly; nothing was changed
	Removed                         // pillion's chains and rules were removed
	NotInstalled                    // nothing of pillion's was there; nothing was changed
)

// Report is what Apply or Cleanup did to one family's tables. Counts of
// rules include pillion's rules in built-in chains.
type Report struct {
	Family                      Family
	Outcome                     Outcome
	ChainsAdded, RulesAdded     int
	ChainsRemoved, RulesRemoved int
}

// String is a one-line human account, e.g. "IPv4: installed 4 chains and
// 14 rules".
func (r Report) String() string {
	added := fmt.Sprintf("%d chains and %d rules", r.ChainsAdded, r.RulesAdded)
	removed := fmt.Sprintf("%d chains and %d rules", r.ChainsRemoved, r.RulesRemoved)
	var what string
	switch r.Outcome {
	case Installed:
		what = "installed " + added
	case Replaced:
		what = "replaced a different pillion install: removed " + removed + ", installed " + added
	case Unchanged:
		what = "already installed, nothing changed"
	case Removed:
		what = "removed " + removed
	case NotInstalled:
		what = "nothing installed, nothing changed"
	default:
		what = fmt.Sprintf("Outcome(%d)", int(r.Outcome))
	}
	return r.Family.String() + ": " + what
}

// Apply installs each target's plan, in order. For each family it reads
// pillion's chains and rules first: if they are exactly the plan, it
// changes nothing (Unchanged); if there are others (say, from a run with
// other flags), it removes them as Cleanup would and installs the plan
// (Replaced); otherwise it installs the plan (Installed).
//
// Apply is all or nothing: if any step fails, or ctx is done between
// steps, every change this call made, in every family, is undone in
// reverse order, and the error says what failed (and whether undoing
// failed too). Rules that are not pillion's are never touched.
func Apply(ctx context.Context, targets ...Target) ([]Report, error) {
	return transact(ctx, targets, applyOne)
}

// Cleanup removes pillion's rules and chains from each target's tables.
// It is Apply's plan inverted — pillion's rules in the built-in chains the
// plan hooks are deleted, then pillion's chains are flushed and deleted —
// but it goes by what is installed rather than by the plan's rules: it
// removes every rule in those built-in chains whose comment starts with
// CommentPrefix and every chain whose name starts with ChainPrefix, so it
// works whatever flags the install used. Nothing installed is no error
// (NotInstalled). Like Apply it is all or nothing.
func Cleanup(ctx context.Context, targets ...Target) ([]Report, error) {
	return transact(ctx, targets, cleanupOne)
}

func applyOne(x *txn, p Plan) (Report, error) {
	rep := Report{Family: p.Family}
	s, err := readInstalled(x.t, p)
	if err != nil {
		return rep, err
	}
	if s.matches(p) {
		rep.Outcome = Unchanged
		return rep, nil
	}
	rep.Outcome = Installed
	if !s.empty() {
		rep.Outcome = Replaced
		rep.ChainsRemoved, rep.RulesRemoved = s.counts()
		if err := x.remove(s, p); err != nil {
			return rep, err
		}
	}
	if err := x.install(p); err != nil {
		return rep, err
	}
	rep.ChainsAdded, rep.RulesAdded = len(p.Chains), len(p.Rules)
	return rep, nil
}

func cleanupOne(x *txn, p Plan) (Report, error) {
	rep := Report{Family: p.Family, Outcome: NotInstalled}
	s, err := readInstalled(x.t, p)
	if err != nil || s.empty() {
		return rep, err
	}
	rep.Outcome = Removed
	rep.ChainsRemoved, rep.RulesRemoved = s.counts()
	return rep, x.remove(s, p)
}

// transact runs one per target and undoes everything if one fails.
func transact(ctx context.Context, targets []Target, one func(*txn, Plan) (Report, error)) ([]Report, error) {
	var txns []*txn
	var reports []Report
	for _, tg := range targets {
		x := &txn{ctx: ctx, family: tg.Plan.Family, t: tg.Tables}
		txns = append(txns, x)
		rep, err := one(x, tg.Plan)
		if err != nil {
			return nil, rollback(txns, fmt.Errorf("redirect: %s: %w", tg.Plan.Family, err))
		}
		reports = append(reports, rep)
	}
	return reports, nil
}

// rollback undoes txns, last first, and says in the error how that went.
func rollback(txns []*txn, cause error) error {
	var errs []error
	for _, x := range slices.Backward(txns) {
		if err := x.rollback(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", x.family, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w; undoing this run's changes failed too, pillion's rules may be half-installed "+
			"(run pillion init --cleanup): %w", cause, errors.Join(errs...))
	}
	return fmt.Errorf("%w (this run's changes were undone)", cause)
}

// step is one change to the tables and the change that undoes it.
type step struct {
	what     string
	do, undo func(Tables) error
}

// txn applies steps to one family's tables and remembers them for undo.
type txn struct {
	ctx    context.Context
	family Family
	t      Tables
	done   []step
}

func (x *txn) run(s step) error {
	if err := x.ctx.Err(); err != nil {
		return fmt.Errorf("stopped before %s: %w", s.what, err)
	}
	if err := s.do(x.t); err != nil {
		return fmt.Errorf("%s: %w", s.what, err)
	}
	x.done = append(x.done, s)
	return nil
}

// rollback undoes the steps done, last first. It goes on past a failure
// and returns every failure.
func (x *txn) rollback() error {
	var errs []error
	for _, s := range slices.Backward(x.done) {
		if err := s.undo(x.t); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.what, err))
		}
	}
	x.done = nil
	return errors.Join(errs...)
}

// install creates p's chains, fills them, then hooks them into the
// built-in chains, so capture starts only once everything is in place.
func (x *txn) install(p Plan) error {
	for _, c := range p.Chains {
		err := x.run(step{
			what: "create chain " + c,
			do:   func(t Tables) error { return t.NewChain(Table, c) },
			undo: func(t Tables) error { return t.DeleteChain(Table, c) },
		})
		if err != nil {
			return err
		}
	}
	for _, r := range p.Rules {
		err := x.run(step{
			what: "add rule " + r.String(),
			do:   func(t Tables) error { return t.Append(Table, r.Chain, r.Spec()...) },
			undo: func(t Tables) error { return t.Delete(Table, r.Chain, r.Spec()...) },
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// remove takes out what s found of pillion's: its rules in built-in
// chains first (capture stops), then its chains are flushed and deleted.
// Each deleted rule is undone by inserting it back where it was.
func (x *txn) remove(s installed, p Plan) error {
	for _, c := range p.hookedChains() {
		live := slices.Clone(s.hooks[c])
		for _, r := range s.hooks[c] {
			if !r.pillions() {
				continue
			}
			// Delete removes the first identical rule; undo puts it back there.
			i := slices.IndexFunc(live, func(l listedRule) bool { return l.text == r.text })
			live = slices.Delete(live, i, i+1)
			err := x.run(step{
				what: "delete rule " + r.text,
				do:   func(t Tables) error { return t.Delete(Table, c, r.spec...) },
				undo: func(t Tables) error { return t.Insert(Table, c, i+1, r.spec...) },
			})
			if err != nil {
				return err
			}
		}
	}
	for _, c := range s.names {
		if rules := s.chains[c]; len(rules) > 0 {
			err := x.run(step{
				what: "flush chain " + c,
				do:   func(t Tables) error { return t.ClearChain(Table, c) },
				undo: func(t Tables) error { return appendAll(t, c, rules) },
			})
			if err != nil {
				return err
			}
		}
	}
	for _, c := range s.names {
		err := x.run(step{
			what: "delete chain " + c,
			do:   func(t Tables) error { return t.DeleteChain(Table, c) },
			undo: func(t Tables) error { return t.NewChain(Table, c) },
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func appendAll(t Tables, chain string, rules []listedRule) error {
	for _, r := range rules {
		if err := t.Append(Table, chain, r.spec...); err != nil {
			return fmt.Errorf("add rule %s: %w", r.text, err)
		}
	}
	return nil
}

// installed is what of pillion's one family's nat table holds.
type installed struct {
	hooks  map[string][]listedRule // built-in chain the plan hooks → all its rules
	chains map[string][]listedRule // pillion chain → its rules
	names  []string                // pillion chains, sorted
}

// readInstalled reads the chains p hooks and every pillion chain.
func readInstalled(t Tables, p Plan) (installed, error) {
	s := installed{hooks: map[string][]listedRule{}, chains: map[string][]listedRule{}}
	all, err := t.ListChains(Table)
	if err != nil {
		return s, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range all {
		if strings.HasPrefix(c, ChainPrefix) {
			s.names = append(s.names, c)
		}
	}
	slices.Sort(s.names)
	read := func(c string) ([]listedRule, error) {
		lines, err := t.List(Table, c)
		if err != nil {
			return nil, fmt.Errorf("list chain %s: %w", c, err)
		}
		return parseListing(c, lines)
	}
	for _, c := range s.names {
		if s.chains[c], err = read(c); err != nil {
			return s, err
		}
	}
	for _, c := range p.hookedChains() {
		if s.hooks[c], err = read(c); err != nil {
			return s, err
		}
	}
	return s, nil
}

// pillionHooks returns pillion's rules in built-in chain c.
func (s installed) pillionHooks(c string) []string {
	var out []string
	for _, r := range s.hooks[c] {
		if r.pillions() {
			out = append(out, r.text)
		}
	}
	return out
}

func (s installed) empty() bool {
	chains, rules := s.counts()
	return chains == 0 && rules == 0
}

func (s installed) counts() (chains, rules int) {
	for _, c := range s.names {
		rules += len(s.chains[c])
	}
	for c := range s.hooks {
		rules += len(s.pillionHooks(c))
	}
	return len(s.names), rules
}

// matches reports whether what is installed is exactly p: the same
// chains, the same rules in each, the same pillion rules in each hooked
// built-in chain, all in the same order.
func (s installed) matches(p Plan) bool {
	if !slices.Equal(s.names, slices.Sorted(slices.Values(p.Chains))) {
		return false
	}
	want := map[string][]string{}
	for _, r := range p.Rules {
		want[r.Chain] = append(want[r.Chain], r.String())
	}
	for _, c := range p.Chains {
		var got []string
		for _, r := range s.chains[c] {
			got = append(got, r.text)
		}
		if !slices.Equal(got, want[c]) {
			return false
		}
	}
	for _, c := range p.hookedChains() {
		if !slices.Equal(s.pillionHooks(c), want[c]) {
			return false
		}
	}
	return true
}
