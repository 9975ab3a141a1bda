package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"syscall"

	"github.com/agentfleet/agentfleet/builder"
	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	"github.com/spf13/cobra"
)

// check is one line of `fleet doctor`.
type check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn, fail
	Detail string `json:"detail"`
}

func newDoctorCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "doctor",
		Short:   "Check this host: QEMU, accelerator, VirtualBox, disk and memory",
		Example: "  fleet doctor\n  fleet doctor --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.layout()
			if err != nil {
				return err
			}
			checks := runChecks(cmd.Context(), execx.Local{}, l.Root)
			failed := false
			for _, c := range checks {
				failed = failed || c.Status == "fail"
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					fmt.Fprintf(cmd.OutOrStdout(), "%-5s %-19s %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
				}
			}
			if failed {
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func runChecks(ctx context.Context, r execx.Runner, home string) []check {
	var out []check
	version := func(name string, args ...string) (string, error) {
		b, err := r.Run(ctx, execx.Cmd{Name: name, Args: args})
		return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]), err
	}
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if v, err := version(bin, "--version"); err != nil {
			out = append(out, check{bin, "fail", err.Error() + " (" + qemuInstallHint() + ")"})
		} else {
			out = append(out, check{bin, "ok", v})
		}
	}
	if runtime.GOOS == "darwin" {
		if ok, why := qemu.HVFUsable(); ok {
			out = append(out, check{"accelerator", "ok", "hvf (Hypervisor.framework)"})
		} else {
			out = append(out, check{"accelerator", "warn", "tcg (software emulation, 10-50x slower): " + why})
		}
	} else if ok, why := qemu.KVMUsable(); ok {
		out = append(out, check{"accelerator", "ok", "kvm"})
	} else {
		detail := "tcg (software emulation, 10-50x slower): " + why
		if st, err := os.Stat("/dev/kvm"); err == nil && strings.Contains(why, "permission") {
			detail += fmt.Sprintf("; /dev/kvm is %v: add yourself to its group (sudo usermod -aG kvm $USER)", st.Mode())
		}
		out = append(out, check{"accelerator", "warn", detail})
	}
	out = append(out, arm64Checks(ctx, r)...)
	out = append(out, virtualBoxChecks(ctx, r)...)
	var fs syscall.Statfs_t
	_ = os.MkdirAll(home, 0o700)
	if err := syscall.Statfs(home, &fs); err == nil {
		free := int64(fs.Bavail) * int64(fs.Bsize) >> 30
		st := "ok"
		if free < 10 {
			st = "warn"
		}
		out = append(out, check{"disk", st, fmt.Sprintf("%d GiB free under %s", free, home)})
	}
	if mem := fleet.MemAvailableMiB(); mem > 0 {
		out = append(out, check{"memory", "ok", fmt.Sprintf("%d MiB available (about %d machines at 2G)", mem, mem/2048)})
	}
	return out
}

// qemuInstallHint says how this host gets QEMU.
func qemuInstallHint() string {
	if runtime.GOOS == "darwin" {
		return "macOS: brew install qemu"
	}
	return "Debian/Ubuntu: apt-get install qemu-system-x86 qemu-utils"
}

var vboxVersionRe = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)`)

// virtualBoxChecks reports the VirtualBox version (7.2.4 is broken: idle
// VMs burn 100% CPU) and whether KVM holds VT-x, which makes VirtualBox fail.
func virtualBoxChecks(ctx context.Context, r execx.Runner) []check {
	b, err := r.Run(ctx, execx.Cmd{Name: "VBoxManage", Args: []string{"--version"}})
	if err != nil {
		return []check{{"virtualbox", "ok", "not installed (optional)"}}
	}
	v := strings.TrimSpace(string(b))
	out := []check{vboxVersionCheck(v)}
	if _, err := os.Stat("/sys/module/kvm_intel"); err == nil {
		out = append(out, check{"kvm-vbox", "warn", "the kvm_intel module holds VT-x, so VirtualBox VMs will fail to start; free it with: sudo modprobe -r kvm_intel"})
	} else if _, err := os.Stat("/sys/module/kvm_amd"); err == nil {
		out = append(out, check{"kvm-vbox", "warn", "the kvm_amd module holds AMD-V, so VirtualBox VMs will fail to start; free it with: sudo modprobe -r kvm_amd"})
	}
	return out
}

func vboxVersionCheck(v string) check {
	m := vboxVersionRe.FindStringSubmatch(v)
	if m == nil {
		return check{"virtualbox", "warn", "unrecognised version " + v}
	}
	if m[1] == "7" && m[2] == "2" && m[3] == "4" {
		return check{"virtualbox", "fail", v + " is broken (idle VMs burn 100% CPU); upgrade to 7.2.6 or later"}
	}
	return check{"virtualbox", "ok", v}
}

// arm64Checks report what arm64 images need here: qemu-system-aarch64 and
// UEFI firmware to boot them, and on another architecture's Linux host the
// qemu-user-static handler a chroot bake runs their packages through. They
// warn, never fail: amd64 images need none of it.
func arm64Checks(ctx context.Context, r execx.Runner) []check {
	var out []check
	hint := "arm64 images need it (" + arm64InstallHint() + ")"
	if b, err := r.Run(ctx, execx.Cmd{Name: "qemu-system-aarch64", Args: []string{"--version"}}); err != nil {
		out = append(out, check{"qemu-system-aarch64", "warn", "not found: " + hint})
	} else {
		out = append(out, check{"qemu-system-aarch64", "ok", strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])})
	}
	if fw, err := qemu.FindFirmware("aarch64", qemu.FirmwareDirs); err != nil {
		out = append(out, check{"arm64 firmware", "warn", err.Error()})
	} else {
		out = append(out, check{"arm64 firmware", "ok", fw})
	}
	if runtime.GOOS == "linux" && vm.HostArch() != vm.ARM64 {
		if err := builder.CheckForeignChroot(vm.ARM64, "/proc/sys/fs/binfmt_misc"); err != nil {
			out = append(out, check{"arm64 bakes", "warn", err.Error()})
		} else {
			out = append(out, check{"arm64 bakes", "ok", "qemu-user-static is registered with binfmt_misc"})
		}
	}
	return out
}

func arm64InstallHint() string {
	if runtime.GOOS == "darwin" {
		return "brew install qemu"
	}
	return "apt-get install qemu-system-arm qemu-efi-aarch64"
}
