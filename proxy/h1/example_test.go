package h1_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/pillionmesh/pillion/proxy/h1"
)

func ExampleTransport() {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
	}))
	defer app.Close()

	t := &h1.Transport{MaxIdlePerHost: 8, IdleTimeout: 4 * time.Second, ExpectContinueTimeout: time.Second}
	defer t.CloseIdleConnections()
	req, _ := http.NewRequest("GET", app.URL+"/hello?x=1", nil)
	res, err := t.RoundTrip(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(res.Body) // to its end: the connection goes back to the pool
	res.Body.Close()
	fmt.Println(res.Status, string(body))
	// Output: 200 OK GET /hello?x=1
}
