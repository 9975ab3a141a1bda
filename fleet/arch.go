package fleet

import (
	"fmt"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// CheckArch decides whether a spawn may run img's architecture here,
// before anything is made:
//   - the driver must run it at all (VirtualBox: amd64 only);
//   - --arch, if given, must name the image's architecture;
//   - an image of another architecture than the host's runs under
//     software emulation. Where the host's own would be accelerated that
//     is many times slower than the user may expect, so it needs --arch;
//     on a host that emulates everything anyway it does not.
func CheckArch(img ImageRef, asked vm.Arch, d vm.Driver) error {
	arch := img.Arch.Or()
	caps := d.Capabilities()
	if !caps.Runs(arch) {
		return fmt.Errorf("image %s is %s, which the %s driver does not run", img, arch, d.Name())
	}
	if asked != "" && asked != arch {
		return fmt.Errorf("--arch %s, but image %s is %s (build one with: fleet image build %s --arch %s)", asked, img, arch, img.Name, asked)
	}
	if arch != vm.HostArch() && caps.Accelerated && asked == "" {
		return fmt.Errorf("image %s is %s, and this %s host would emulate it in software, many times slower than its own %s machines; pass --arch %s to run it anyway, or use a %s image", img, arch, vm.HostArch(), vm.HostArch(), arch, vm.HostArch())
	}
	return nil
}
