package redirect

// Tables is what Apply and Cleanup need of one family's iptables: the
// subset of go-iptables' *iptables.IPTables they call, so tests can wrap
// it. NewTables returns the real one. Every call acts on the network
// namespace of the calling OS thread.
//
// It is larger than our interfaces usually are because a transaction needs
// each mutation and its inverse (NewChain/DeleteChain, Append/Delete, and
// Insert to put a deleted rule back where it was) plus reads to compare
// what is installed with the plan. It mirrors go-iptables' method set so
// that the real type satisfies it without an adapter.
type Tables interface {
	// ListChains returns the names of every chain in table.
	ListChains(table string) ([]string, error)
	// List returns chain's "-P"/"-N" line and its rules as iptables -S
	// prints them.
	List(table, chain string) ([]string, error)
	NewChain(table, chain string) error
	// ClearChain flushes an existing chain.
	ClearChain(table, chain string) error
	// DeleteChain deletes an empty, unreferenced chain.
	DeleteChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	// Insert inserts a rule at 1-based position pos.
	Insert(table, chain string, pos int, rulespec ...string) error
	// Delete deletes the first rule that matches rulespec.
	Delete(table, chain string, rulespec ...string) error
}
