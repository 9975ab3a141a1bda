package qemu

import (
	"os"

	"golang.org/x/sys/unix"
)

// Ioctl numbers from <linux/kvm.h>.
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// KVMUsable reports whether /dev/kvm can actually create a VM, with the
// reason when it cannot. Opening the device is not enough: in a nested
// guest without VT-x passthrough, open succeeds and VM creation fails.
func KVMUsable() (bool, string) {
	if cpu, err := os.ReadFile("/proc/cpuinfo"); err == nil && !hasVirtFlag(cpu) {
		// Some nested hosts offer a /dev/kvm that creates VMs but emulates
		// paging in software (kvm-pvm) and hangs real guests; without the
		// vmx/svm flag there is no hardware virtualization to use.
		return false, "the CPU offers no hardware virtualization (no vmx/svm flag in /proc/cpuinfo)"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, err.Error()
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil || v != kvmAPIVersion {
		return false, "unexpected KVM API version"
	}
	vmfd, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	if err != nil {
		return false, "KVM_CREATE_VM failed: " + err.Error() + " (is hardware virtualization enabled, or held by another hypervisor?)"
	}
	unix.Close(vmfd)
	return true, ""
}

// HVFUsable is false off macOS.
func HVFUsable() (bool, string) { return false, "Hypervisor.framework is macOS only" }
