package qemu

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

func TestBoardAliasIsTheVersionedMachineType(t *testing.T) {
	help := "Supported machines are:\npc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n" +
		"q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n"
	if got := boardAlias(help, "q35"); got != "pc-q35-7.2" {
		t.Errorf("boardAlias(q35) = %q", got)
	}
	arm := "virt                 QEMU 7.2 ARM Virtual Machine (alias of virt-7.2)\nvirt-7.1              QEMU 7.1 ARM Virtual Machine\n"
	if got := boardAlias(arm, "virt"); got != "virt-7.2" {
		t.Errorf("boardAlias(virt) = %q", got)
	}
	if got := boardAlias("nothing here", "virt"); got != "virt" {
		t.Errorf("an unknown help text gives %q, want the bare board", got)
	}
}

// An arm64 guest's key names its own board, CPU model and firmware, and is
// never an x86 template's; on a host of another architecture it is
// emulated whatever the driver's accelerator.
func TestStateKeyOfAnARM64Guest(t *testing.T) {
	dir := t.TempDir()
	for _, b := range []string{"qemu-system-x86_64", "qemu-system-aarch64"} {
		os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	fw := filepath.Join(dir, "code.fd")
	os.WriteFile(fw, make([]byte, 4096), 0o644)
	t.Setenv(FirmwareEnv, fw)
	var asked []string
	f := &execxtest.Fake{Handle: func(c execx.Cmd) ([]byte, error) {
		asked = append(asked, c.Name)
		if c.Args[0] == "--version" {
			return []byte("QEMU emulator version 7.2.22\n"), nil
		}
		if c.Name == "qemu-system-aarch64" {
			return []byte("virt   QEMU 7.2 ARM Virtual Machine (alias of virt-7.2)\n"), nil
		}
		return []byte("q35   Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"), nil
	}}
	d := &Driver{Runner: f, Accel: AccelKVM, Binary: "qemu-system-x86_64", ARM64Binary: "qemu-system-aarch64"}
	if vm.HostArch() == vm.ARM64 {
		d.Accel = AccelTCG
	}
	s := vm.Spec{Name: "a", Dir: "/x/a", Arch: vm.ARM64, CPUs: 2, MemoryMiB: 2048}
	k, err := d.StateKey(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"machine=virt-7.2", "cpu=max,pauth-impdef=on", "accel=tcg", "arch=arm64", "firmware=" + fw} {
		if !strings.Contains(k, want) {
			t.Errorf("key %q lacks %s", k, want)
		}
	}
	for _, name := range asked {
		if name != "qemu-system-aarch64" {
			t.Errorf("asked %s about an arm64 guest", name)
		}
	}
	s.Arch = vm.AMD64
	x, _ := d.StateKey(context.Background(), s)
	if x == k || strings.Contains(x, "virt") {
		t.Errorf("the amd64 key %q is the arm64 one's", x)
	}
	// Another firmware build is another machine.
	os.WriteFile(fw, make([]byte, 8192), 0o644)
	s.Arch = vm.ARM64
	if k2, _ := d.StateKey(context.Background(), s); k2 == k {
		t.Error("a new firmware kept the key")
	}
}

// The key of saved state: what must match on restore changes it; what may
// differ between a template and its clones (paths, forward commands) does
// not.
func TestStateKeyNamesWhatRestoreNeeds(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	t.Setenv("PATH", filepath.Dir(bin)+":"+os.Getenv("PATH"))
	version := "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)\n"
	f := &execxtest.Fake{Handle: func(c execx.Cmd) ([]byte, error) {
		if c.Args[0] == "--version" {
			return []byte(version), nil
		}
		return []byte("q35   Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"), nil
	}}
	d := &Driver{Runner: f, Accel: AccelTCG, Binary: "qemu-system-x86_64"}
	base := vm.Spec{Name: "a", Dir: "/x/a", CPUs: 1, MemoryMiB: 1024, Network: vm.Network{Restrict: true,
		Forwards: []vm.Forward{{GuestPort: 3128, Command: []string{"fleet", "__proxy", "egress", "/x/a"}}}}}
	key := func(s vm.Spec) string {
		k, err := d.StateKey(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	for _, want := range []string{"7.2.15", "accel=tcg", "machine=pc-q35-7.2", "cpu=max", "cpus=1", "mem=1024", "restrict=true", "forwards=[3128]"} {
		if !strings.Contains(k0, want) {
			t.Errorf("key %q lacks %s", k0, want)
		}
	}
	same := base
	same.Name, same.Dir = "b", "/y/b"
	same.Network.Forwards = []vm.Forward{{GuestPort: 3128, Command: []string{"fleet", "__proxy", "egress", "/y/b"}}}
	if key(same) != k0 {
		t.Error("paths and forward commands changed the key")
	}
	for name, edit := range map[string]func(*vm.Spec){
		"cpus":     func(s *vm.Spec) { s.CPUs = 2 },
		"memory":   func(s *vm.Spec) { s.MemoryMiB = 2048 },
		"open net": func(s *vm.Spec) { s.Network = vm.Network{} },
		"forwards": func(s *vm.Spec) { s.Network.Forwards = append(s.Network.Forwards, vm.Forward{GuestPort: 8119}) },
	} {
		s := base
		edit(&s)
		if key(s) == k0 {
			t.Errorf("%s did not change the key", name)
		}
	}
	version = "QEMU emulator version 8.2.2\n"
	if key(base) == k0 {
		t.Error("another QEMU build kept the key")
	}
	d.Accel = AccelKVM
	if key(base) == k0 {
		t.Error("another accelerator kept the key")
	}
}
