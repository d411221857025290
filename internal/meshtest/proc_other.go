//go:build !linux

package meshtest

import "errors"

var errNoProc = errors.New("meshtest: process statistics need Linux's /proc")

// ProxyPID needs Linux.
func (sc *Sidecar) ProxyPID() (int, error) { return 0, errNoProc }

// RSS needs Linux.
func RSS(int) (int64, error) { return 0, errNoProc }

// StatusBytes needs Linux.
func StatusBytes(int, ...string) ([]int64, error) { return nil, errNoProc }

// OpenFDs needs Linux.
func OpenFDs(int) (int, error) { return 0, errNoProc }
