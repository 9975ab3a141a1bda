package qemu

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/execx/execxtest"
	"github.com/agentfleet/agentfleet/internal/vm"
)

func checks(cs []vm.HostCheck) map[string]vm.HostCheck {
	m := map[string]vm.HostCheck{}
	for _, c := range cs {
		m[c.Name] = c
	}
	return m
}

// Missing programs fail (amd64) or warn (arm64) with this host's install
// command; present ones show their version's first line.
func TestHostChecksNameThePackages(t *testing.T) {
	t.Setenv(FirmwareEnv, "")
	r := &execxtest.Fake{Missing: []string{"qemu-system-x86_64", "qemu-system-aarch64"}, Handle: func(c execx.Cmd) ([]byte, error) {
		return []byte("qemu-img version 7.2.0\nCopyright"), nil
	}}
	d := New(r, AccelTCG, nil)
	d.FirmwareDirs = []string{t.TempDir()}
	cs := checks(d.HostChecks(context.Background()))
	sys := cs["qemu-system-x86_64"]
	if sys.Status != vm.CheckFail || !strings.Contains(sys.Detail, "not installed") || sys.Hint != installHint(pkgAMD64) {
		t.Errorf("missing qemu: %+v", sys)
	}
	if runtime.GOOS == "linux" && !strings.Contains(sys.Hint, "apt-get install qemu-system-x86") {
		t.Errorf("the package is not named: %q", sys.Hint)
	}
	if img := cs["qemu-img"]; img.Status != vm.CheckOK || img.Detail != "qemu-img version 7.2.0" {
		t.Errorf("qemu-img: %+v", img)
	}
	if a := cs["qemu-system-aarch64"]; a.Status != vm.CheckWarn || a.Hint != installHint(pkgARM64) {
		t.Errorf("missing qemu-system-aarch64 only warns: %+v", a)
	}
	fw := cs["arm64 firmware"]
	if fw.Status != vm.CheckWarn || !strings.Contains(fw.Detail, installHint(pkgFirmware)) || !strings.Contains(fw.Detail, FirmwareEnv) {
		t.Errorf("no firmware: %+v", fw)
	}
	if acc := cs["accelerator"]; acc.Status == vm.CheckFail || acc.Detail == "" {
		t.Errorf("accelerator: %+v", acc)
	}
	// Validate says the same as doctor: one hint, written once.
	if err := (&Driver{Binary: "no-such-qemu-xyz", ImgBin: "qemu-img"}).Validate(context.Background()); err == nil || !strings.Contains(err.Error(), installHint(pkgAMD64)) {
		t.Errorf("validate: %v", err)
	}
}

// Each fact doctor and fleet read from the driver is there.
func TestCapabilitiesCarryTheFacts(t *testing.T) {
	t.Setenv("FLEET_BOOT_TIMEOUT", "")
	kvm, tcg := New(nil, AccelKVM, nil).Capabilities(), New(nil, AccelTCG, nil).Capabilities()
	if kvm.BootTimeout != BootTimeout(AccelKVM) || kvm.EmulatedBootTimeout != BootTimeout(AccelTCG) || tcg.BootTimeout != BootTimeout(AccelTCG) {
		t.Errorf("boot timeouts: kvm %+v tcg %+v", kvm, tcg)
	}
	if kvm.ShareTag != shareTag || !strings.Contains(strings.Join(SystemArgs(MachineArgs{VirtiofsSocket: "/s"}), " "), "tag="+kvm.ShareTag) {
		t.Errorf("the tag fleet mounts is not the one QEMU is given: %q", kvm.ShareTag)
	}
}

// KSM off is a hint saying how to turn it on, never a failure; on, it
// says what it saves.
func TestKSMCheck(t *testing.T) {
	write := func(dir, name, v string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	off := t.TempDir()
	write(off, "run", "0\n")
	on := t.TempDir()
	write(on, "run", "1\n")
	write(on, "pages_sharing", "51200\n")
	bad := t.TempDir()
	write(bad, "run", "lots")
	stopped := t.TempDir()
	write(stopped, "run", "2\n")
	for _, c := range []struct {
		name, dir string
		status    vm.CheckStatus
		detail    string
		hint      string
	}{
		{"off", off, vm.CheckWarn, "KSM off (opt-in)", "echo 1 | sudo tee " + filepath.Join(off, "run")},
		{"on", on, vm.CheckOK, "KSM on", ""},
		{"stopped", stopped, vm.CheckWarn, "KSM off", "echo 1"},
		{"unreadable", bad, vm.CheckWarn, "holds no number", ""},
		{"missing", filepath.Join(off, "nope"), vm.CheckWarn, "not in this kernel", ""},
	} {
		got := ksmCheck(c.dir)
		if got.Status != c.status || !strings.Contains(got.Detail, c.detail) || !strings.Contains(got.Hint, c.hint) || (c.hint == "" && got.Hint != "") {
			t.Errorf("%s: %+v", c.name, got)
		}
		if strings.Contains(got.Detail+got.Hint, "\n") {
			t.Errorf("%s: not one line: %+v", c.name, got)
		}
	}
	if got := ksmCheck(on); os.Getpagesize() == 4096 && !strings.Contains(got.Detail, "200 MiB saved") {
		t.Errorf("saved: %q", got.Detail)
	}
}
