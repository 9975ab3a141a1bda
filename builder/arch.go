package builder

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// An image of another architecture than the host's is baked in a chroot
// all the same: the kernel hands the guest's binaries to qemu-user-static
// through binfmt_misc, which Debian's qemu-user-static and binfmt-support
// register. Provisioning then runs under user-mode emulation, several
// times slower than native but far faster than a whole emulated guest.

// forArch swaps the amd64 package set's architecture-specific packages for
// arch's: its kernel and its boot loader (GRUB for UEFI on arm64, where
// there is no BIOS).
func forArch(packages []string, arch vm.Arch) []string {
	if arch.Or() == vm.AMD64 {
		return packages
	}
	out := make([]string, 0, len(packages))
	for _, p := range packages {
		switch {
		case p == "grub-pc":
			p = "grub-efi-" + string(arch)
		case strings.HasSuffix(p, "-amd64"):
			p = strings.TrimSuffix(p, "-amd64") + "-" + string(arch)
		}
		out = append(out, p)
	}
	return out
}

// CheckForeignChroot says what is missing to run arch's binaries in a
// chroot on this host: the binfmt_misc file system mounted at dir and
// qemu-user-static's handler for arch enabled in it.
func CheckForeignChroot(arch vm.Arch, dir string) error {
	fix := "apt-get install qemu-user-static binfmt-support arch-test"
	if _, err := os.Stat(filepath.Join(dir, "register")); err != nil {
		return fmt.Errorf("baking an %s image on this %s host runs its packages under qemu-user-static, and binfmt_misc is not mounted at %s (mount -t binfmt_misc binfmt_misc %s; then %s)", arch, vm.HostArch(), dir, dir, fix)
	}
	b, err := os.ReadFile(filepath.Join(dir, "qemu-"+arch.QEMU()))
	if err != nil {
		return fmt.Errorf("baking an %s image on this %s host runs its packages under qemu-user-static, whose %s handler is not registered with binfmt_misc (%s; update-binfmts --enable qemu-%s)", arch, vm.HostArch(), arch.QEMU(), fix, arch.QEMU())
	}
	if !strings.HasPrefix(string(b), "enabled") {
		return fmt.Errorf("the binfmt_misc handler qemu-%s is disabled (update-binfmts --enable qemu-%s)", arch.QEMU(), arch.QEMU())
	}
	// F: the kernel opens the interpreter when the handler is registered,
	// so it runs inside a chroot that does not have it.
	if !strings.Contains(handlerField(string(b), "flags:"), "F") {
		return fmt.Errorf("the binfmt_misc handler qemu-%s lacks the F flag, so it cannot run inside a chroot (Debian's qemu-user-static registers it with F)", arch.QEMU())
	}
	return nil
}

// handlerField is the value of a binfmt_misc handler file's "name:" line
// ("flags: PF" gives "PF"), or "".
func handlerField(handler, name string) string {
	for _, l := range strings.Split(handler, "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
