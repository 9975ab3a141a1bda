package qemu

import "golang.org/x/sys/unix"

// disableHugePages makes this process, and every process it starts from
// now on (QEMU among them: the flag is inherited and kept across exec),
// use 4 KiB pages where it would get transparent huge pages.
func disableHugePages() error {
	return unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0)
}
