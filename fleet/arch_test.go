package fleet

import (
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

type archDriver struct {
	vm.Driver
	caps vm.Capabilities
}

func (archDriver) Name() string                    { return "qemu" }
func (d archDriver) Capabilities() vm.Capabilities { return d.caps }

// Spawn runs an image of the host's architecture as before; one of another
// architecture on an accelerated host only when --arch says so; any
// architecture on a host that emulates everything; never one the driver
// cannot run or one --arch contradicts.
func TestCheckArch(t *testing.T) {
	host := vm.HostArch()
	other := vm.ARM64
	if host == vm.ARM64 {
		other = vm.AMD64
	}
	both := []vm.Arch{vm.AMD64, vm.ARM64}
	kvm := archDriver{caps: vm.Capabilities{Arches: both, Accelerated: true}}
	tcg := archDriver{caps: vm.Capabilities{Arches: both}}
	vbox := archDriver{caps: vm.Capabilities{}}
	img := func(a vm.Arch) ImageRef { return ImageRef{Name: "debian-12", Version: "v1", Arch: a} }
	for _, tt := range []struct {
		name    string
		img     ImageRef
		asked   vm.Arch
		d       vm.Driver
		wantErr string
	}{
		{"host's own, accelerated", img(host), "", kvm, ""},
		{"host's own, named", img(host), host, kvm, ""},
		{"another, accelerated host: refused", img(other), "", kvm, "--arch " + string(other)},
		{"another, accelerated host, --arch: emulated by consent", img(other), other, kvm, ""},
		{"another, all emulated anyway", img(other), "", tcg, ""},
		{"--arch contradicts the image", img(host), other, tcg, "is " + string(host)},
		{"a driver that runs amd64 only", img(vm.ARM64), vm.ARM64, vbox, "does not run"},
		{"an old image with no recorded arch is amd64", ImageRef{Name: "debian-12", Version: "v0"}, vm.AMD64, vbox, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckArch(tt.img, tt.asked, tt.d)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one naming %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("not one line: %q", err)
			}
		})
	}
}

// A machine of another architecture is emulated even on an accelerated
// host, so it gets the emulated boot timeout.
func TestEmulatedMachinesWaitLonger(t *testing.T) {
	c := &Controller{BootTimeout: 3 * time.Minute, EmulatedBootTimeout: 10 * time.Minute}
	other := vm.ARM64
	if vm.HostArch() == vm.ARM64 {
		other = vm.AMD64
	}
	if got := c.Guests().bootTimeout(vm.HostArch()); got != 3*time.Minute {
		t.Errorf("host arch: %s", got)
	}
	if got := c.Guests().bootTimeout(other); got != 10*time.Minute {
		t.Errorf("%s on a %s host: %s", other, vm.HostArch(), got)
	}
	c.BootTimeout = 20 * time.Minute // FLEET_BOOT_TIMEOUT, or TCG already
	if got := c.Guests().bootTimeout(other); got != 20*time.Minute {
		t.Errorf("a longer timeout was shortened: %s", got)
	}
}
