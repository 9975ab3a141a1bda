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

func TestQ35AliasIsTheVersionedMachineType(t *testing.T) {
	help := "Supported machines are:\npc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n" +
		"q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n"
	if got := q35Alias(help); got != "pc-q35-7.2" {
		t.Errorf("q35Alias = %q", got)
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
