package testpod

import "syscall"

// sysProcAttr makes the kernel kill a process when the thread that
// started it ends (see start). setpriv's change of user clears it again
// for a process run as another user; those run in a pod, whose leftovers
// the next Node's cleanup kills by namespace.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
