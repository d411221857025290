package appprobe_test

import (
	"fmt"

	"github.com/pillionmesh/pillion/appprobe"
)

// The injector writes the original probes; the sidecar parses them.
func ExampleParse() {
	s := appprobe.Set{
		appprobe.Path("app", appprobe.Readiness): {HTTPGet: &appprobe.HTTPGet{Path: "/ready", Port: 8080}},
		appprobe.Path("app", appprobe.Liveness):  {TCPSocket: &appprobe.TCPSocket{Port: 8080}, TimeoutSeconds: 5},
	}
	env := s.Encode() // PILLION_APP_PROBES
	fmt.Println(env)

	back, err := appprobe.Parse(env)
	fmt.Println(len(back), err)

	_, err = appprobe.Parse(`{"/app-health/app/readyz": {"httpGet": {"path": "/ready"}}}`)
	fmt.Println(err)
	// Output:
	// {"/app-health/app/livez":{"tcpSocket":{"port":8080},"timeoutSeconds":5},"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080}}}
	// 2 <nil>
	// appprobe: "/app-health/app/readyz": httpGet.port: 0: not a port (1-65535)
}
