//go:build !linux

package slurm

// becomeSubreaper is Linux's; elsewhere a daemonized QEMU is init's, and
// the job's cleanup alone ends it.
func becomeSubreaper() {}
