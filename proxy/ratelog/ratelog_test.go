package ratelog

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestEverySecond: one line a second, the rest counted and reported with
// the next line.
func TestEverySecond(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	var e EverySecond
	for range 5 {
		if ce, n := e.Check(log, zapcore.WarnLevel, "flood"); ce != nil {
			ce.Write(zap.Int64("suppressed", n))
		}
	}
	if ce, _ := e.Check(log, zapcore.DebugLevel, "below the level"); ce != nil {
		t.Error("a line below the logger's level was let through")
	}
	e.last.Add(-int64(time.Second)) // a second later
	if ce, n := e.Check(log, zapcore.WarnLevel, "flood"); ce != nil {
		ce.Write(zap.Int64("suppressed", n))
	}
	var got []int64
	for _, l := range logs.All() {
		got = append(got, l.ContextMap()["suppressed"].(int64))
	}
	if len(got) != 2 || got[0] != 0 || got[1] != 4 {
		t.Errorf("lines written with suppressed = %v, want [0 4]", got)
	}
}
