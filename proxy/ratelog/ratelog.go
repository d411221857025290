// Package ratelog lets one log line of a kind of event through at most
// once a second, and counts the ones it held back: what a flood causes
// (connections refused over a limit, handshakes queued, headers too slow,
// lookups that gave up) must not become a flood of log lines.
package ratelog

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EverySecond lets one line of a kind of event through to the log at most
// once a second, and counts the ones it held back meanwhile. The zero
// value is ready; it is safe for concurrent use.
type EverySecond struct {
	last       atomic.Int64 // unix nanoseconds of the last line written
	suppressed atomic.Int64 // events since then whose line was held back
}

// Check returns the entry to write for an event at level, with the count
// of lines held back since the last one as the field "suppressed" added by
// the caller's Write; nil when the logger would drop the level, or when a
// line was written less than a second ago (the event is then counted).
func (e *EverySecond) Check(log *zap.Logger, level zapcore.Level, msg string) (*zapcore.CheckedEntry, int64) {
	if !log.Core().Enabled(level) {
		return nil, 0
	}
	// The time first: an entry checked out and not written is not given
	// back to zap's pool, and in a flood nearly every event is held back.
	now := time.Now().UnixNano()
	last := e.last.Load()
	if now-last < int64(time.Second) || !e.last.CompareAndSwap(last, now) {
		e.suppressed.Add(1)
		return nil, 0
	}
	ce := log.Check(level, msg)
	if ce == nil {
		return nil, 0
	}
	return ce, e.suppressed.Swap(0)
}
