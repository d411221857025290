package admin

import (
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ServerInfo is what /server_info shows besides the state, which comes from Sources.Ready.
type ServerInfo struct {
	Version string
	// Started is when the process started; uptime counts from it to Sources.Now.
	Started time.Time
	// CommandLineOptions are the flags in effect, by flag name; nil shows as {}.
	CommandLineOptions map[string]string
}

// ready answers /ready as Envoy does: 200 and "LIVE\n" when ready (Ready's state word, LIVE when
// empty); otherwise 503, the state word on the first line (INITIALIZING when empty) and the reason
// on the second.
func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	if s.src.Ready == nil {
		unavailable(w, r)
		return
	}
	state, err := s.readyState()
	if err != nil {
		text(w, http.StatusServiceUnavailable, "%s\n%v\n", state, err)
		return
	}
	text(w, http.StatusOK, "%s\n", state)
}

// readyState is Ready with the empty state word filled in.
func (s *server) readyState() (string, error) {
	state, err := s.src.Ready()
	switch {
	case state != "":
	case err == nil:
		state = "LIVE"
	default:
		state = "INITIALIZING"
	}
	return state, err
}

// serverInfo answers /server_info with Envoy's field names:
//
//	{"version","state","uptime_current_epoch":"<n>s","uptime_all_epochs":"<n>s","command_line_options":{...}}
//
// Uptimes are whole seconds written as protobuf JSON durations; there is no hot restart, so both are
// the same. state is Ready's state word, or "UNKNOWN" without Ready.
func (s *server) serverInfo(w http.ResponseWriter, r *http.Request) {
	if s.src.ServerInfo == nil {
		unavailable(w, r)
		return
	}
	info := s.src.ServerInfo()
	state := "UNKNOWN"
	if s.src.Ready != nil {
		state, _ = s.readyState()
	}
	uptime := fmt.Sprintf("%ds", int64(s.src.Now().Sub(info.Started)/time.Second))
	opts := info.CommandLineOptions
	if opts == nil {
		opts = map[string]string{}
	}
	writeJSON(w, struct {
		Version            string            `json:"version"`
		State              string            `json:"state"`
		UptimeCurrentEpoch string            `json:"uptime_current_epoch"`
		UptimeAllEpochs    string            `json:"uptime_all_epochs"`
		CommandLineOptions map[string]string `json:"command_line_options"`
	}{info.Version, state, uptime, uptime, opts})
}

// validLevels are the levels POST /logging accepts, as its errors list them.
const validLevels = "debug, info, warn, error"

// logging answers POST /logging. With no query it prints "level: <level>\n"; with ?level= one of
// debug, info, warn (or Envoy's spelling, warning), error it sets Sources.Level and prints the new
// level the same way. Anything else is 400 naming the valid levels, and changes nothing.
func (s *server) logging(w http.ResponseWriter, r *http.Request) {
	if s.src.Level == (zap.AtomicLevel{}) {
		unavailable(w, r)
		return
	}
	if r.URL.RawQuery == "" {
		text(w, http.StatusOK, "level: %s\n", s.src.Level.Level())
		return
	}
	q := r.URL.Query()
	name := q.Get("level")
	if name == "warning" {
		name = "warn"
	}
	switch name {
	case "debug", "info", "warn", "error":
	default:
		what := fmt.Sprintf("unknown level %q", q.Get("level"))
		if !q.Has("level") {
			what = "missing ?level="
		}
		text(w, http.StatusBadRequest, "logging: %s: valid levels are %s\n", what, validLevels)
		return
	}
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(name)); err != nil { // cannot fail for the names above
		text(w, http.StatusInternalServerError, "logging: %v\n", err)
		return
	}
	old := s.src.Level.Level()
	s.src.Level.SetLevel(l)
	s.log.Info("admin: log level changed", zap.Stringer("from", old), zap.Stringer("to", l))
	text(w, http.StatusOK, "level: %s\n", l)
}

// drain, quit, healthFail and healthOK call their Sources func once and answer "OK\n", as Envoy's
// /drain_listeners, /quitquitquit and /healthcheck/{fail,ok} do.
func (s *server) drain(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.src.Drain)
}

func (s *server) quit(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.src.Quit)
}

func (s *server) healthFail(w http.ResponseWriter, r *http.Request) {
	s.healthCheck(w, r, true)
}

func (s *server) healthOK(w http.ResponseWriter, r *http.Request) {
	s.healthCheck(w, r, false)
}

func (s *server) healthCheck(w http.ResponseWriter, r *http.Request, fail bool) {
	if s.src.HealthFail == nil {
		unavailable(w, r)
		return
	}
	s.control(w, r, func() { s.src.HealthFail(fail) })
}

func (s *server) control(w http.ResponseWriter, r *http.Request, f func()) {
	if f == nil {
		unavailable(w, r)
		return
	}
	s.log.Info("admin: "+r.URL.Path, zap.String("remote", r.RemoteAddr))
	f()
	text(w, http.StatusOK, "OK\n")
}
