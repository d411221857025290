package spiretest

import "syscall"

// sysProcAttr makes the kernel kill a SPIRE process when the thread that
// started it ends (see start).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
