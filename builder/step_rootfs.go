package builder

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepBootstrapRootfs builds the root file system from the package mirror
// with mmdebstrap, which resolves dependencies with apt (debootstrap's own
// resolver fails on virtual packages such as python3-cffi-backend-api).
//
// Reads "config", "mirror", "workdir"; skipped when "qcow2" is set.
// Writes "rootfs". Cleanup: the folder lives in the workdir.
type StepBootstrapRootfs struct{}

func (s *StepBootstrapRootfs) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	rootfs := filepath.Join(state.Get("workdir").(string), "rootfs")
	cfg.say("bootstrapping %s %s root file system (%d packages and their dependencies)...", cfg.Suite, cfg.Arch.Or(), len(cfg.Packages))
	if cfg.Arch.Or() != vm.HostArch() {
		cfg.say("  %s packages install under qemu-user-static emulation: slower than native", cfg.Arch)
	}
	args := MmdebstrapArgs(cfg.Arch.Or(), cfg.Suite, state.Get("mirror").(string), rootfs, cfg.Components, cfg.Packages)
	if cfg.directBoot() {
		args = append([]string{smallInitrdHook}, args...)
	}
	_, err := cfg.Runner.Run(ctx, execx.Cmd{Name: "mmdebstrap", Args: args})
	if err != nil {
		return halt(state, fmt.Errorf("bootstrap %s: %w", cfg.Name, err))
	}
	state.Put("rootfs", rootfs)
	return multistep.ActionContinue
}

func (s *StepBootstrapRootfs) Cleanup(multistep.StateBag) {}

// smallInitrdHook makes the kernel package's first initrd hold only the
// modules named in /etc/initramfs-tools/modules, as the fast-boot script
// (85-fast-boot.sh, which writes this same setting and then rebuilds the
// initrd with its list) would leave it anyway. The initrd with every
// module the kernel's postinst would otherwise build is thrown away
// unused, and under qemu-user-static it took four minutes.
const smallInitrdHook = `--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && echo MODULES=list > "$1/etc/initramfs-tools/conf.d/90-agentfleet.conf"`

// MmdebstrapArgs builds the mmdebstrap command line. A foreign arch runs
// its maintainer scripts through binfmt_misc (mmdebstrap checks it with
// arch-test).
func MmdebstrapArgs(arch vm.Arch, suite, mirror, target string, components, packages []string) []string {
	if len(components) == 0 {
		components = []string{"main"}
	}
	return []string{
		"--mode=root", "--variant=apt", "--quiet", "--architectures=" + string(arch),
		"--include=" + strings.Join(packages, ","),
		suite, target,
		fmt.Sprintf("deb %s %s %s", mirror, suite, strings.Join(components, " ")),
	}
}
