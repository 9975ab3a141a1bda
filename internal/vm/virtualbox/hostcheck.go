package virtualbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// What this driver needs of the host, written once for Validate, Start's
// errors and `fleet doctor` (HostChecks).

var versionRe = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)`)

// Why checkVersion refuses a version.
var (
	errNotAVersion = errors.New("not a version")
	errTooOld      = errors.New("too old")
	errBroken      = errors.New("broken release")
)

// checkVersion says why the driver does not run the VirtualBox whose
// VBoxManage --version printed v, nil if it does: 7.0 or later, but not
// 7.2.4 (idle VMs burn a whole core) unless forced.
func checkVersion(v string, force bool) error {
	m := versionRe.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("VBoxManage --version printed %q, %w", v, errNotAVersion)
	}
	major, _ := strconv.Atoi(m[1])
	switch {
	case major < 7:
		return fmt.Errorf("VirtualBox %s is %w: this driver needs 7.0 or later", v, errTooOld)
	case m[0] == "7.2.4" && !force:
		return fmt.Errorf("VirtualBox %s is a %w: idle VMs burn 100%% CPU (fixed in 7.2.6); upgrade, or pass --force to spawn or up to use it anyway", v, errBroken)
	}
	return nil
}

// kvmHolder is a KVM module that, loaded, holds the CPU's virtualization
// so VirtualBox cannot start VMs, with the code VBoxManage then fails with.
type kvmHolder struct{ module, feature, code string }

var kvmHolders = []kvmHolder{
	{"kvm_intel", "VT-x", "VERR_VMX_IN_VMX_ROOT_MODE"},
	{"kvm_amd", "AMD-V", "VERR_SVM_IN_USE"},
}

func (k kvmHolder) fix() string { return "sudo modprobe -r " + k.module }

// sysModule lists the loaded kernel modules (a variable for tests).
var sysModule = "/sys/module"

var _ vm.HostChecker = (*Driver)(nil)

// HostChecks report VirtualBox's version and whether KVM holds VT-x. A
// VirtualBox this driver cannot use is fine (it is optional), except the
// release that burns CPU even outside fleet.
func (d *Driver) HostChecks(ctx context.Context) []vm.HostCheck {
	b, err := d.v.runner.Run(ctx, execx.Cmd{Name: d.v.bin, Args: versionArgs()})
	if err != nil {
		return []vm.HostCheck{{Name: "virtualbox", Status: vm.CheckOK, Detail: "not installed (optional)"}}
	}
	v := strings.TrimSpace(string(b))
	out := []vm.HostCheck{versionCheck(v)}
	for _, k := range kvmHolders {
		if _, err := os.Stat(filepath.Join(sysModule, k.module)); err == nil {
			out = append(out, vm.HostCheck{Name: "kvm-vbox", Status: vm.CheckWarn,
				Detail: fmt.Sprintf("the %s module holds %s, so VirtualBox VMs will fail to start; free it with: %s", k.module, k.feature, k.fix())})
			break
		}
	}
	return out
}

func versionCheck(v string) vm.HostCheck {
	c := vm.HostCheck{Name: "virtualbox", Status: vm.CheckOK, Detail: v}
	switch err := checkVersion(v, false); {
	case errors.Is(err, errNotAVersion):
		c.Status, c.Detail = vm.CheckWarn, "unrecognised version "+v
	case errors.Is(err, errTooOld):
		c.Detail = err.Error() + " (optional)"
	case err != nil:
		c.Status, c.Detail = vm.CheckFail, err.Error()
	}
	return c
}
