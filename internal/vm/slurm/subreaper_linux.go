package slurm

import "golang.org/x/sys/unix"

// becomeSubreaper makes orphans below this process (a daemonized QEMU)
// its children rather than init's.
func becomeSubreaper() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }
