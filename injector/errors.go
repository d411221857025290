package injector

import "fmt"

// prefixed is err as an exported function returns it: "injector: " in
// front, nil for nil. The package's own callers use the unexported
// functions, so that the prefix is never doubled (and the webhook's denial
// reads "pillion sidecar injection: annotation …").
func prefixed(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("injector: %w", err)
}
