package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filewatch"
	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// configPollInterval is how often a config file is re-read; a change is
// applied when two reads in a row agree (package filewatch).
const configPollInterval = time.Second

// loadConfig reads and parses the config file at path.
func loadConfig(path string) ([]byte, *configfile.File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	f, err := parseConfig(path, data)
	return data, f, err
}

// parseConfig parses data, read from path.
func parseConfig(path string, data []byte) (*configfile.File, error) {
	f, err := configfile.Parse(data, builtin.Registry())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// newConfigWatcher watches the proxy's config file at path, whose
// contents current s runs with, and applies each change to s. A file
// that cannot be read, parsed or built is refused with one log line; the
// running config stays.
func newConfigWatcher(path string, current []byte, s *proxy.Server, log *zap.Logger) *filewatch.Watcher {
	return filewatch.New(filewatch.Options{
		Paths:    []string{path},
		Interval: configPollInterval,
		Current:  [][]byte{current},
		Apply: func(contents [][]byte) error {
			f, err := parseConfig(path, contents[0])
			if err == nil {
				err = proxyUserError(s.Apply(f)) // with the flags that give an identity, if it lacks one
			}
			if err == nil {
				log.Info("config reloaded", zap.String("path", path))
			}
			return err
		},
		Refused: func(err error) {
			log.Error("config refused: the running config stays", zap.String("path", path), zap.Error(err))
		},
		Log: log,
	})
}

// forceOn calls each of force for every signal received on sig (SIGHUP,
// which the command subscribes to), until ctx ends.
func forceOn(ctx context.Context, sig <-chan os.Signal, force ...func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			for _, f := range force {
				f()
			}
		}
	}
}
