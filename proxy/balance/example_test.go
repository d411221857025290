package balance_test

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pillionmesh/pillion/proxy/balance"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func Example() {
	b := balance.New(balance.Config{}, nil, nil)
	b.Update([]balance.Endpoint{
		{Endpoint: upstream.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.7:8080")}, Ready: true, Serving: true},
		// Terminating: it finishes its requests but takes no new one.
		{Endpoint: upstream.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.8:8080")}, Serving: true, Terminating: true},
	})

	ep, done, err := b.Pick()
	if err != nil {
		fmt.Println(err)
		return
	}
	start := time.Now()
	// ... send the request to ep.Addr, wait for the response headers ...
	done(time.Since(start), false)
	fmt.Println("sent to", ep.Addr)

	b.Update(nil)
	_, _, err = b.Pick()
	fmt.Println(err, errors.Is(err, upstream.ErrNoHealthyUpstream))
	// Output:
	// sent to 10.0.0.7:8080
	// balance: no endpoints: no healthy upstream true
}
