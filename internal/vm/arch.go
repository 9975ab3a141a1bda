package vm

import (
	"fmt"
	"runtime"
	"strings"
)

// Arch is a guest's CPU architecture, in Go's and Debian's words.
type Arch string

const (
	AMD64 Arch = "amd64" // x86_64: qemu-system-x86_64, q35
	ARM64 Arch = "arm64" // aarch64: qemu-system-aarch64, virt, UEFI
)

// Arches lists the architectures fleet bakes and boots.
var Arches = []Arch{AMD64, ARM64}

// HostArch is the architecture of the machine fleet runs on. Only its own
// architecture can be accelerated (KVM, HVF); any other is emulated.
func HostArch() Arch { return Arch(runtime.GOARCH) }

// ParseArch reads an architecture as a user writes it: amd64 or x86_64,
// arm64 or aarch64. "" is the host's.
func ParseArch(s string) (Arch, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return HostArch(), nil
	case "amd64", "x86_64", "x86-64", "x64":
		return AMD64, nil
	case "arm64", "aarch64":
		return ARM64, nil
	}
	return "", fmt.Errorf("unknown architecture %q (use amd64 or arm64)", s)
}

// Or returns a, or AMD64 when a is empty: what images and machines made
// before architectures were recorded are.
func (a Arch) Or() Arch {
	if a == "" {
		return AMD64
	}
	return a
}

// QEMU is the architecture's name in QEMU's binaries and firmware
// descriptors: x86_64 or aarch64.
func (a Arch) QEMU() string {
	if a.Or() == ARM64 {
		return "aarch64"
	}
	return "x86_64"
}
