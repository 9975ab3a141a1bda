package main

import (
	"context"
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

func TestDoctorVirtualBoxVersions(t *testing.T) {
	for v, want := range map[string]string{
		"7.2.4r170995": "fail",
		"7.2.4":        "fail",
		"7.2.6r172322": "ok",
		"7.1.12":       "ok",
		"6.1.50":       "ok",
		"garbage":      "warn",
	} {
		if got := vboxVersionCheck(v); got.Status != want {
			t.Errorf("%s: %+v, want %s", v, got, want)
		}
	}
	if c := vboxVersionCheck("7.2.4r1"); !strings.Contains(c.Detail, "7.2.6") {
		t.Errorf("the fix should be named: %q", c.Detail)
	}
}
