package smuggling

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"
)

// followUp is sent on the client's connection after the application's
// answer to a case: it must reach the application as one more request.
const followUp = "GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

const followUpPath = "/after"

// Run sends c's request on a new connection from dial, through the
// sidecars, to app (which nothing else uses meanwhile), and checks the
// outcome against c.Want. It returns the outcome in a few words.
func Run(t testing.TB, dial func() (net.Conn, error), app *App, c Case) string {
	t.Helper()
	mark := app.Mark()
	conn, err := dial()
	if err != nil {
		t.Fatalf("smuggling: dial: %v", err)
	}
	defer conn.Close()
	statuses, closed, sentFollowUp := exchange(t, conn, c.Request)
	got := settle(app, mark)
	reqs, cut, junk := parse(got)

	var smuggled bool
	var others []*http.Request
	for _, r := range reqs {
		smuggled = smuggled || r.URL.Path == SmuggledPath
		if r.URL.Path != followUpPath {
			others = append(others, r)
		}
	}
	if smuggled {
		t.Errorf("the application got the smuggled request: %q", got)
	}
	describe := func() string {
		return fmt.Sprintf("statuses %v (closed %v), the application got %d complete requests, %d cut, junk %v: %q", statuses, closed, len(reqs), cut, junk, got)
	}
	switch c.Want {
	case Refused:
		if len(statuses) != 1 || !refusal(statuses[0]) || !closed {
			t.Errorf("want one refusal (4xx or 501), then the connection closed; %s", describe())
		}
		if len(reqs) != 0 || junk {
			t.Errorf("want no complete request at the application; %s", describe())
		}
		if len(statuses) > 0 {
			return fmt.Sprintf("%d, %d bytes reached the application (%d cut requests)", statuses[0], total(got), cut)
		}
	case OneRequest:
		if len(statuses) != 2 || statuses[0] != http.StatusOK || statuses[1] != http.StatusOK || !sentFollowUp {
			t.Errorf("want the application's 200, and 200 for the follow-up on the same connection; %s", describe())
		}
		if len(others) != 1 || len(reqs) != 2 || cut != 0 || junk {
			t.Errorf("want exactly one well-formed request, and the follow-up; %s", describe())
		}
		for _, r := range others {
			for k, forged := range c.Forged {
				if slices.ContainsFunc(r.Header.Values(k), func(v string) bool { return slices.Contains(forged, v) }) {
					t.Errorf("the application got the forged %s: %q", k, r.Header.Values(k))
				}
			}
		}
		return "one request"
	case Verbatim:
		want := c.Request
		if sentFollowUp {
			want += followUp
		}
		if string(bytes.Join(got, nil)) != want {
			t.Errorf("want the client's bytes at the application, unchanged: %q; %s", want, describe())
		}
		if len(others) > 1 {
			t.Errorf("want at most one request; %s", describe())
		}
		return fmt.Sprintf("opaque, the application read %d request(s) from the client's bytes", len(others))
	}
	return describe()
}

func refusal(status int) bool {
	return status >= 400 && status < 500 || status == http.StatusNotImplemented
}

func total(got [][]byte) int {
	n := 0
	for _, b := range got {
		n += len(b)
	}
	return n
}

// exchange writes request on conn and reads every response until the
// connection ends, sending followUp once after a first 200. closed is
// whether the server closed the connection (rather than going quiet).
func exchange(t testing.TB, conn net.Conn, request string) (statuses []int, closed, sentFollowUp bool) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// The write runs beside the reads: a sidecar may answer before it
	// read all of it.
	go func() { _, _ = io.WriteString(conn, request) }()
	br := bufio.NewReader(conn)
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			closed = !errors.Is(err, os.ErrDeadlineExceeded)
			return statuses, closed, sentFollowUp
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		statuses = append(statuses, res.StatusCode)
		if res.StatusCode == http.StatusOK && !sentFollowUp {
			sentFollowUp = true
			_, _ = io.WriteString(conn, followUp)
		}
	}
}

// settle waits until what app received since mark stops changing.
func settle(app *App, mark Mark) [][]byte {
	deadline := time.Now().Add(3 * time.Second)
	got := app.Since(mark)
	for time.Now().Before(deadline) {
		time.Sleep(150 * time.Millisecond)
		again := app.Since(mark)
		if total(again) == total(got) {
			return again
		}
		got = again
	}
	return got
}

// parse reads got, connection by connection, with Go's strict parser: the
// complete requests (their bodies read to the end), how many ended cut
// (the connection ended inside their body), and whether any bytes were no
// request at all.
func parse(got [][]byte) (reqs []*http.Request, cut int, junk bool) {
	for _, b := range got {
		br := bufio.NewReader(bytes.NewReader(b))
		for {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			r, err := http.ReadRequest(br)
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					cut++ // the head itself ended cut
				} else {
					junk = true
				}
				break
			}
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				cut++
				break
			}
			reqs = append(reqs, r)
		}
	}
	return reqs, cut, junk
}
