//go:build !linux

package qemu

// disableHugePages: only Linux has transparent huge pages to turn off.
func disableHugePages() error { return nil }
