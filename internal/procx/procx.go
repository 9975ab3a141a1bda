// Package procx reads another process's command line, the one thing
// fleet asks of a process besides whether it lives: a pid in a pid file
// is trusted only if its command line names the machine folder, so a
// recycled pid is never mistaken for (or killed as) a machine's process.
// Linux reads /proc; macOS asks the kernel with sysctl kern.procargs2.
package procx

import (
	"errors"
	"syscall"
)

// ErrUnknown means the platform cannot say.
var ErrUnknown = errors.New("this platform cannot read another process's command line")

// Alive says whether pid exists and has not exited (a zombie has).
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	return !zombie(pid)
}

// Cmdline is pid's arguments, NUL-separated as the kernel keeps them.
func Cmdline(pid int) (string, error) { return cmdline(pid) }
