package timeout_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/timeout"
)

func Example() {
	var c timeout.Config
	if err := json.Unmarshal([]byte(`{"request": "15s"}`), &c); err != nil {
		panic(err)
	}
	f, err := c.Build(filters.Env{Log: zap.NewNop(), AccessLog: zap.NewNop(), Now: time.Now})
	if err != nil {
		panic(err)
	}
	router := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadline, ok := r.Context().Deadline()
		fmt.Println("deadline:", ok, time.Until(deadline).Round(time.Second))
	})
	chain := filters.NewChain(router, filters.Named{Name: "timeout", Filter: f})
	chain.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "http://b/", nil))
	// Output: deadline: true 15s
}
