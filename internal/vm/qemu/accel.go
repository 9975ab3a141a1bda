package qemu

import (
	"bytes"
	"os"
	"runtime"
	"time"

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
	if runtime.GOOS != "linux" {
		return false, "not Linux"
	}
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

// DetectAccel picks the fastest accelerator this host offers.
func DetectAccel() Accel {
	switch runtime.GOOS {
	case "linux":
		if ok, _ := KVMUsable(); ok {
			return AccelKVM
		}
	case "darwin":
		return AccelHVF
	}
	return AccelTCG
}

// hasVirtFlag reports whether a /proc/cpuinfo "flags" line names vmx or svm.
func hasVirtFlag(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if string(f) == "vmx" || string(f) == "svm" {
				return true
			}
		}
	}
	return false
}

// BootTimeout is how long to wait for a guest's SSH: software emulation
// boots several times slower, and FLEET_BOOT_TIMEOUT (a Go duration)
// overrides both.
func BootTimeout(a Accel) time.Duration {
	if v, err := time.ParseDuration(os.Getenv("FLEET_BOOT_TIMEOUT")); err == nil && v > 0 {
		return v
	}
	if a == AccelTCG {
		return 10 * time.Minute
	}
	return 3 * time.Minute
}
