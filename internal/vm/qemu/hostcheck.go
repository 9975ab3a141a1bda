package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// What this driver needs of the host, written once for Validate,
// ValidateArch, FindFirmware and `fleet doctor` (HostChecks).

// Debian/Ubuntu packages of what guests need (macOS: one Homebrew formula
// has it all).
const (
	pkgAMD64    = "qemu-system-x86 qemu-utils"
	pkgARM64    = "qemu-system-arm qemu-efi-aarch64"
	pkgImg      = "qemu-utils"
	pkgFirmware = "qemu-efi-aarch64"
)

// installHint says how this host installs the Debian/Ubuntu packages pkgs.
func installHint(pkgs string) string {
	if runtime.GOOS == "darwin" {
		return "macOS: brew install qemu"
	}
	return "Debian/Ubuntu: apt-get install " + pkgs
}

// tcgDetail is what running without an accelerator means, and why.
func tcgDetail(why string) string {
	return "tcg (software emulation, 10-50x slower): " + why
}

var _ vm.HostChecker = (*Driver)(nil)

// HostChecks report the QEMU programs and their versions, the accelerator
// this host offers, and what arm64 guests need (a warning at most: amd64
// images need none of it).
func (d *Driver) HostChecks(ctx context.Context) []vm.HostCheck {
	var out []vm.HostCheck
	for _, bin := range []string{d.Binary, d.ImgBin} {
		if v, err := d.version(ctx, bin); err != nil {
			out = append(out, vm.HostCheck{Name: bin, Status: vm.CheckFail, Detail: err.Error(), Hint: installHint(pkgAMD64)})
		} else {
			out = append(out, vm.HostCheck{Name: bin, Status: vm.CheckOK, Detail: v})
		}
	}
	out = append(out, accelCheck())
	if v, err := d.version(ctx, d.ARM64Binary); err != nil {
		out = append(out, vm.HostCheck{Name: d.ARM64Binary, Status: vm.CheckWarn, Detail: "not found: arm64 images need it", Hint: installHint(pkgARM64)})
	} else {
		out = append(out, vm.HostCheck{Name: d.ARM64Binary, Status: vm.CheckOK, Detail: v})
	}
	if fw, err := FindFirmware(vm.ARM64.QEMU(), d.FirmwareDirs); err != nil {
		out = append(out, vm.HostCheck{Name: "arm64 firmware", Status: vm.CheckWarn, Detail: err.Error()})
	} else {
		out = append(out, vm.HostCheck{Name: "arm64 firmware", Status: vm.CheckOK, Detail: fw})
	}
	if runtime.GOOS == "linux" {
		out = append(out, ksmCheck(ksmDir))
	}
	return out
}

// ksmDir is where Linux shows kernel samepage merging.
const ksmDir = "/sys/kernel/mm/ksm"

// ksmCheck says whether the kernel merges identical pages of machines
// (KSM). It is off unless the host's owner turns it on: it costs a
// kernel thread's CPU, and merging is a timing side channel between
// guests. QEMU
// marks guest RAM mergeable by default (-machine mem-merge=on), which
// fleet keeps, so turning it on is all it takes. Never a failure.
func ksmCheck(dir string) vm.HostCheck {
	c := vm.HostCheck{Name: "memory merging", Status: vm.CheckWarn}
	run, err := readSmallInt(filepath.Join(dir, "run"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.Detail = "KSM is not in this kernel (CONFIG_KSM): identical pages of idle machines are not merged"
	case err != nil:
		c.Detail = "cannot tell whether KSM is on: " + err.Error()
	case run == 1:
		c.Status, c.Detail = vm.CheckOK, "KSM on"
		if n, err := readSmallInt(filepath.Join(dir, "pages_sharing")); err == nil && n > 0 {
			c.Detail += fmt.Sprintf(": %d MiB saved", uint64(n)*uint64(os.Getpagesize())>>20)
		}
	default:
		c.Detail = "KSM off (opt-in): identical pages of idle machines are not merged"
		c.Hint = "turn it on: echo 1 | sudo tee " + filepath.Join(dir, "run") + "; QEMU marks guest RAM mergeable by default"
	}
	return c
}

// readSmallInt reads a sysfs file holding one number.
func readSmallInt(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, 32)
	n, _ := f.Read(b)
	v, err := strconv.ParseInt(strings.TrimSpace(string(b[:n])), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s holds no number", path)
	}
	return v, nil
}

// version is the first line bin --version prints.
func (d *Driver) version(ctx context.Context, bin string) (string, error) {
	b, err := d.Runner.Run(ctx, execx.Cmd{Name: bin, Args: []string{"--version"}})
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]), nil
}

// accelCheck probes the host's accelerator, whatever --accel asked for.
func accelCheck() vm.HostCheck {
	c := vm.HostCheck{Name: "accelerator"}
	if runtime.GOOS == "darwin" {
		if ok, why := HVFUsable(); ok {
			c.Status, c.Detail = vm.CheckOK, "hvf (Hypervisor.framework)"
		} else {
			c.Status, c.Detail = vm.CheckWarn, tcgDetail(why)
		}
		return c
	}
	ok, why := KVMUsable()
	if ok {
		c.Status, c.Detail = vm.CheckOK, "kvm"
		return c
	}
	c.Status, c.Detail = vm.CheckWarn, tcgDetail(why)
	if st, err := os.Stat("/dev/kvm"); err == nil && strings.Contains(why, "permission") {
		c.Detail += fmt.Sprintf("; /dev/kvm is %v: add yourself to its group (sudo usermod -aG kvm $USER)", st.Mode())
	}
	return c
}
