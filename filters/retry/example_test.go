package retry_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/retry"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func Example() {
	var c retry.Config
	if err := json.Unmarshal([]byte(`{"attempts": 3, "on": ["connect-failure", "503"], "backoff": "1ms"}`), &c); err != nil {
		panic(err)
	}
	f, err := c.Build(filters.Env{Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now})
	if err != nil {
		panic(err)
	}
	// A stand-in for the router: the upstream cannot be reached the first
	// time, and answers the second.
	router := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := filters.FromContext(r.Context())
		if info.StartAttempt() == 1 {
			info.SetUpstreamFailure(upstream.ConnectFailure)
			filters.Reply(w, r, http.StatusServiceUnavailable, filters.UpstreamConnectFailure, "upstream connect error")
			return
		}
		fmt.Fprintln(w, "hello")
	})
	chain := filters.NewChain(router, filters.Named{Name: "retry", Filter: f})

	info := &filters.Info{}
	r := httptest.NewRequest(http.MethodPost, "http://b/", nil)
	w := httptest.NewRecorder()
	chain.ServeHTTP(w, r.WithContext(filters.NewContext(r.Context(), info)))
	fmt.Printf("%d %q after %d attempts, flags %s\n", w.Code, w.Body.String(), info.Attempts(), info.Flags())
	// Output: 200 "hello\n" after 2 attempts, flags -
}
