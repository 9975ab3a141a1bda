package qemu

import "golang.org/x/sys/unix"

// KVMUsable is false off Linux.
func KVMUsable() (bool, string) { return false, "KVM is Linux only" }

// HVFUsable reports whether macOS offers Hypervisor.framework to QEMU's
// hvf accelerator (kern.hv_support, 1 on Macs that can run VMs). This path
// cannot run on the Linux machines the tests use: it is checked by
// building for darwin, not by booting.
func HVFUsable() (bool, string) {
	v, err := unix.SysctlUint32("kern.hv_support")
	if err != nil {
		return false, "sysctl kern.hv_support: " + err.Error()
	}
	if v != 1 {
		return false, "kern.hv_support is 0: this Mac (or VM) offers no Hypervisor.framework"
	}
	return true, ""
}
