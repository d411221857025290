//go:build !linux

package spiretest

import "syscall"

// sysProcAttr has nothing to add outside Linux: there a SPIRE process
// outlives a test binary that dies without running its cleanups.
func sysProcAttr() *syscall.SysProcAttr { return nil }
