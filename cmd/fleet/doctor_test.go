package main

import (
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/execx/execxtest"
)

func findCheck(cs []check, name string) (check, bool) {
	for _, c := range cs {
		if c.Name == name {
			return c, true
		}
	}
	return check{}, false
}

func TestDoctorFailsWithoutQemuAndNamesThePackage(t *testing.T) {
	r := &execxtest.Fake{Missing: []string{"qemu-system-x86_64", "VBoxManage"}, Handle: func(c execx.Cmd) ([]byte, error) {
		return []byte("qemu-img version 7.2.0\nCopyright"), nil
	}}
	cs := runChecks(context.Background(), r, t.TempDir())
	sys, _ := findCheck(cs, "qemu-system-x86_64")
	if sys.Status != "fail" || !strings.Contains(sys.Detail, "apt-get install qemu-system-x86") {
		t.Errorf("missing qemu: %+v", sys)
	}
	img, _ := findCheck(cs, "qemu-img")
	if img.Status != "ok" || img.Detail != "qemu-img version 7.2.0" {
		t.Errorf("qemu-img: %+v", img)
	}
	vb, _ := findCheck(cs, "virtualbox")
	if vb.Status != "ok" || !strings.Contains(vb.Detail, "not installed") {
		t.Errorf("virtualbox absent should be fine: %+v", vb)
	}
	if d, ok := findCheck(cs, "disk"); !ok || !strings.Contains(d.Detail, "GiB free") {
		t.Errorf("disk check missing: %+v", d)
	}
}

// Doctor prints what the drivers find, hints in parentheses, in the same
// three JSON fields as before; the version rules themselves are tested in
// the virtualbox package.
func TestDoctorAsksTheDrivers(t *testing.T) {
	r := &execxtest.Fake{Missing: []string{"qemu-system-aarch64"}, Handle: func(c execx.Cmd) ([]byte, error) {
		if c.Name == "VBoxManage" {
			return []byte("7.2.4r170995\n"), nil
		}
		return []byte(c.Name + " version 8.2.2\n"), nil
	}}
	cs := runChecks(context.Background(), r, t.TempDir())
	if vb, _ := findCheck(cs, "virtualbox"); vb.Status != "fail" || !strings.Contains(vb.Detail, "7.2.6") {
		t.Errorf("VirtualBox 7.2.4: %+v", vb)
	}
	a, _ := findCheck(cs, "qemu-system-aarch64")
	if a.Status != "warn" || !strings.HasPrefix(a.Detail, "not found: arm64 images need it (") || !strings.HasSuffix(a.Detail, ")") ||
		(runtime.GOOS == "linux" && !strings.Contains(a.Detail, "apt-get install qemu-system-arm")) {
		t.Errorf("missing qemu-system-aarch64: %+v", a)
	}
	if sys, _ := findCheck(cs, "qemu-system-x86_64"); sys.Status != "ok" || sys.Detail != "qemu-system-x86_64 version 8.2.2" {
		t.Errorf("qemu-system-x86_64: %+v", sys)
	}
	seen := map[string]bool{}
	for _, c := range cs {
		if seen[c.Name] {
			t.Errorf("%s checked twice", c.Name)
		}
		seen[c.Name] = true
		b, _ := json.Marshal(c)
		var fields map[string]any
		json.Unmarshal(b, &fields)
		if len(fields) != 3 || fields["name"] == nil || fields["status"] == nil || fields["detail"] == nil {
			t.Errorf("--json shape changed: %s", b)
		}
	}
	for _, name := range []string{"accelerator", "arm64 firmware", "qemu-img", "disk"} {
		if !seen[name] {
			t.Errorf("no %s check in %v", name, cs)
		}
	}
}
