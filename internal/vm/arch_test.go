package vm

import "testing"

func TestParseArch(t *testing.T) {
	for in, want := range map[string]Arch{"": HostArch(), "amd64": AMD64, "x86_64": AMD64, "X86-64": AMD64, "arm64": ARM64, " aarch64 ": ARM64} {
		if got, err := ParseArch(in); err != nil || got != want {
			t.Errorf("ParseArch(%q) = %q, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"i386", "armhf", "riscv64", "arm64;rm -rf /", "\x1b[2J"} {
		if _, err := ParseArch(bad); err == nil {
			t.Errorf("ParseArch(%q) accepted", bad)
		}
	}
	if Arch("").Or() != AMD64 || Arch("").QEMU() != "x86_64" || ARM64.QEMU() != "aarch64" {
		t.Error("defaults and QEMU names")
	}
	var none Capabilities
	if !none.Runs("") || none.Runs(ARM64) {
		t.Error("a driver that lists no architectures runs amd64 only")
	}
}
