package virtualbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/execx/execxtest"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Doctor's grading of versions comes from the same rule Validate applies:
// the broken release fails (it burns CPU even outside fleet), a version
// the driver cannot use is fine (VirtualBox is optional) but says why.
func TestVersionCheck(t *testing.T) {
	for v, want := range map[string]vm.CheckStatus{
		"7.2.4r170995": vm.CheckFail,
		"7.2.4":        vm.CheckFail,
		"7.2.6r172322": vm.CheckOK,
		"7.1.12":       vm.CheckOK,
		"6.1.50":       vm.CheckOK,
		"garbage":      vm.CheckWarn,
		"7.2.40":       vm.CheckOK, // not 7.2.4
		"17.2.4":       vm.CheckOK,
	} {
		if got := versionCheck(v); got.Status != want || got.Name != "virtualbox" {
			t.Errorf("%s: %+v, want %s", v, got, want)
		}
		// What doctor fails, Validate refuses; what it passes, Validate runs.
		if st, err := versionCheck(v).Status, checkVersion(v, false); st == vm.CheckFail && err == nil {
			t.Errorf("%s: doctor fails it, Validate accepts it", v)
		}
	}
	if c := versionCheck("7.2.4r1"); !strings.Contains(c.Detail, "7.2.6") {
		t.Errorf("the fix should be named: %q", c.Detail)
	}
	if c := versionCheck("6.1.50"); !strings.Contains(c.Detail, "7.0 or later") {
		t.Errorf("a version too old to use should say so: %q", c.Detail)
	}
	if c := versionCheck("\x1b[2Jgarbage"); !strings.Contains(c.Detail, "unrecognised") {
		t.Errorf("garbage: %q", c.Detail)
	}
}

func TestHostChecks(t *testing.T) {
	mods := t.TempDir()
	old := sysModule
	sysModule = mods
	t.Cleanup(func() { sysModule = old })
	ctx := context.Background()

	absent := New(&execxtest.Fake{Missing: []string{"VBoxManage"}}, t.TempDir(), nil)
	if cs := absent.HostChecks(ctx); len(cs) != 1 || cs[0].Status != vm.CheckOK || !strings.Contains(cs[0].Detail, "not installed") {
		t.Errorf("VirtualBox absent: %+v", cs)
	}
	d := New(&execxtest.Fake{Handle: func(execx.Cmd) ([]byte, error) { return []byte("7.2.6r172322\n"), nil }}, t.TempDir(), nil)
	if cs := d.HostChecks(ctx); len(cs) != 1 || cs[0].Detail != "7.2.6r172322" {
		t.Errorf("no KVM module loaded: %+v", cs)
	}
	os.Mkdir(filepath.Join(mods, "kvm_amd"), 0o755)
	cs := d.HostChecks(ctx)
	if len(cs) != 2 || cs[1].Name != "kvm-vbox" || cs[1].Status != vm.CheckWarn || !strings.Contains(cs[1].Detail, "sudo modprobe -r kvm_amd") {
		t.Errorf("kvm_amd loaded: %+v", cs)
	}
	// The fix Start suggests is the one doctor names.
	if err := explainStart(&Error{Message: "VERR_SVM_IN_USE"}); !strings.Contains(err.Error(), kvmHolders[1].fix()) {
		t.Errorf("start: %v", err)
	}
}
