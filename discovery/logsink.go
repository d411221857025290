package discovery

import (
	"fmt"

	"github.com/go-logr/logr"
	"go.uber.org/zap"
)

// zapSink carries client-go's contextual logs (logr, as klog hands them
// to the informers through their context) to discovery's zap logger, so
// that a failing list or watch ("pods is forbidden") is a JSON line like
// the others instead of a klog line on stderr. logr's V(0) is Info and
// V(1) Debug; the more verbose levels are dropped.
type zapSink struct{ log *zap.Logger }

var _ logr.LogSink = zapSink{}

// newLogr returns a logr.Logger writing to log.
func newLogr(log *zap.Logger) logr.Logger { return logr.New(zapSink{log}) }

func (zapSink) Init(logr.RuntimeInfo) {}

func (s zapSink) Enabled(level int) bool {
	switch level {
	case 0:
		return s.log.Core().Enabled(zap.InfoLevel)
	case 1:
		return s.log.Core().Enabled(zap.DebugLevel)
	}
	return false
}

func (s zapSink) Info(level int, msg string, kv ...any) {
	if level == 0 {
		s.log.Info(msg, fields(kv)...)
		return
	}
	s.log.Debug(msg, fields(kv)...)
}

func (s zapSink) Error(err error, msg string, kv ...any) {
	s.log.Error(msg, append(fields(kv), zap.Error(err))...)
}

func (s zapSink) WithValues(kv ...any) logr.LogSink { return zapSink{s.log.With(fields(kv)...)} }

func (s zapSink) WithName(name string) logr.LogSink { return zapSink{s.log.Named(name)} }

// fields turns logr's alternating keys and values into zap fields; a key
// that is not a string is printed as one.
func fields(kv []any) []zap.Field {
	fs := make([]zap.Field, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			key = fmt.Sprint(kv[i])
		}
		fs = append(fs, zap.Any(key, kv[i+1]))
	}
	if len(kv)%2 == 1 {
		fs = append(fs, zap.Any("EXTRA_VALUE", kv[len(kv)-1]))
	}
	return fs
}
