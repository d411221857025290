//go:build !linux

package testpod

import "syscall"

// sysProcAttr has nothing to add outside Linux, where testpod does not run.
func sysProcAttr() *syscall.SysProcAttr { return nil }
