package admin_test

import (
	"errors"
	"fmt"
	"net/http/httptest"

	"github.com/pillionmesh/pillion/admin"
	"go.uber.org/zap"
)

func ExampleNew() {
	draining := false
	h := admin.New(admin.Sources{
		Ready: func() (string, error) {
			if draining {
				return "DRAINING", errors.New("draining for shutdown")
			}
			return "LIVE", nil
		},
		Drain: func() { draining = true },
	}, zap.NewNop())

	for _, req := range []struct{ method, path string }{
		{"GET", "/ready"}, {"GET", "/drain"}, {"POST", "/drain"}, {"GET", "/ready"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(req.method, req.path, nil))
		fmt.Printf("%s %s → %d %q\n", req.method, req.path, rec.Code, rec.Body.String())
	}
	// Output:
	// GET /ready → 200 "LIVE\n"
	// GET /drain → 405 "admin: /drain changes the server; use POST\n"
	// POST /drain → 200 "OK\n"
	// GET /ready → 503 "DRAINING\ndraining for shutdown\n"
}
