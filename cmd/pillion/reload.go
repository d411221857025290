package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/filters/builtin"
	"github.com/pillionmesh/pillion/proxy"
	"github.com/pillionmesh/pillion/proxy/configfile"
)

// configPollInterval is how often the config file is re-read; a change
// is applied when two reads in a row agree. Polling the content, rather
// than watching inotify events, also catches Kubernetes' ConfigMap
// updates, which swap a symlink above the file.
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

// reloader re-applies the config file when its content changes or when
// told to (SIGHUP). A file that fails to load or build is refused with a
// log line; the running config stays.
type reloader struct {
	path    string
	s       *proxy.Server
	log     *zap.Logger
	last    []byte // content last tried, applied or refused
	pending []byte // changed content seen once, waiting for a second read to agree
	waiting bool   // pending is set (it may be empty)
}

// run polls until ctx ends; each receive on hup forces a reload.
func (r *reloader) run(ctx context.Context, hup <-chan os.Signal) {
	t := time.NewTicker(configPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload(true)
		case <-t.C:
			r.reload(false)
		}
	}
}

// reload loads the file and applies it when forced, or when it changed
// and the poll before saw the same change: a file caught half-written
// (truncated, then written) is not applied. A file that cannot be read
// counts as content of its own (the error's text), so a missing file is
// reported once, not every poll.
func (r *reloader) reload(force bool) {
	data, readErr := os.ReadFile(r.path)
	if readErr != nil {
		data = []byte("unreadable: " + readErr.Error())
	}
	if !force {
		if bytes.Equal(data, r.last) {
			r.pending, r.waiting = nil, false
			return
		}
		if !r.waiting || !bytes.Equal(data, r.pending) {
			r.pending, r.waiting = data, true
			return
		}
	}
	r.last, r.pending, r.waiting = data, nil, false
	err := readErr
	var f *configfile.File
	if err == nil {
		f, err = parseConfig(r.path, data)
	}
	if err == nil {
		err = r.s.Apply(f)
	}
	if err != nil {
		r.log.Error("config refused: the running config stays", zap.String("path", r.path), zap.Error(err))
		return
	}
	r.log.Info("config reloaded", zap.String("path", r.path))
}
