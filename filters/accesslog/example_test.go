package accesslog_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pillionmesh/pillion/filters"
	"github.com/pillionmesh/pillion/filters/accesslog"
	"github.com/pillionmesh/pillion/proxy/upstream"
)

func Example() {
	// The proxy's access log, without its time key so that the output
	// stays the same.
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = ""
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(os.Stdout), zapcore.InfoLevel))
	start := time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, time.UTC)

	var c accesslog.Config
	f, err := c.Build(filters.Env{
		Direction: filters.Outbound,
		Log:       zap.NewNop(),
		AccessLog: log,
		Now:       func() time.Time { return start.Add(4200 * time.Microsecond) },
		Route:     func(dst netip.AddrPort) upstream.Route { return upstream.Fixed{Addr: dst} },
	})
	if err != nil {
		panic(err)
	}
	router := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := filters.FromContext(r.Context())
		info.StartAttempt()
		info.SetUpstreamTime(3 * time.Millisecond)
		fmt.Fprint(w, "[]")
	})
	chain := filters.NewChain(router, filters.Named{Name: "accesslog", Filter: f})

	info := &filters.Info{
		Start:  start,
		Source: netip.MustParseAddrPort("10.1.2.3:40000"),
	}
	info.SetEndpoint(upstream.Endpoint{
		Addr:    netip.MustParseAddrPort("10.4.5.6:8080"),
		Service: upstream.Service{Namespace: "shop", Name: "catalog"},
	})
	r := httptest.NewRequest(http.MethodGet, "http://catalog:8080/items", nil)
	r.Header.Set("User-Agent", "shop/1.0")
	chain.ServeHTTP(httptest.NewRecorder(), r.WithContext(filters.NewContext(r.Context(), info)))
	// Output: {"level":"info","msg":"access","start":"2026-01-02T03:04:05.678Z","direction":"outbound","protocol":"HTTP/1.1","method":"GET","authority":"catalog:8080","path":"/items","code":200,"flags":"-","duration_ms":4.2,"upstream_ms":3,"bytes_in":0,"bytes_out":2,"attempts":1,"src":"10.1.2.3:40000","upstream":"10.4.5.6:8080","service":"catalog.shop","user_agent":"shop/1.0"}
}
