package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// smapsOf is a clone's QEMU: the template RAM file (named as the kernel
// names it, resolved), TCG's executable buffer, the heap.
func smapsOf(ram string) string {
	return strings.Join([]string{
		"55d0c2c00000-55d0c3400000 r-xp 00200000 fe:01 1311234   /usr/bin/qemu-system-x86_64",
		"Shared_Clean:       8000 kB",
		"Private_Clean:       100 kB",
		"55d0c4000000-55d0c5400000 rw-p 00000000 00:00 0          [heap]",
		"Private_Dirty:     20000 kB",
		"7f2a40000000-7f2a80000000 rwxp 00000000 00:00 0 ",
		"Private_Dirty:    120000 kB",
		"7f2a80000000-7f2b00000000 rw-p 00000000 fe:01 2622001    " + ram,
		"Shared_Clean:     188000 kB",
		"Private_Dirty:     13000 kB",
		"Swap:                 64 kB",
		"SwapPss:              64 kB",
	}, "\n") + "\n"
}

func fakeProc(t *testing.T, pid int, smaps string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "smaps"), []byte(smaps), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestHostMemoryOfAWarmClone(t *testing.T) {
	tplDir := filepath.Join(t.TempDir(), "warm", "k")
	if err := os.MkdirAll(tplDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(tplDir, "memory")
	if err := os.WriteFile(ram, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The spec may name it through a link; the kernel names the file.
	link := filepath.Join(t.TempDir(), "via-link")
	if err := os.Symlink(tplDir, link); err != nil {
		t.Fatal(err)
	}
	resolved, err := filepath.EvalSymlinks(ram)
	if err != nil {
		t.Fatal(err)
	}
	d := &Driver{procRoot: fakeProc(t, 77, smapsOf(resolved))}
	s := vm.Spec{Name: "m-1", MemoryMiB: 2048, Template: &vm.Template{Memory: filepath.Join(link, "memory")}}
	got, err := d.processMemory(77, s)
	if err != nil {
		t.Fatal(err)
	}
	want := vm.HostMemory{Unique: (100 + 20000 + 120000 + 13000) << 10, Shared: (8000 + 188000) << 10,
		TemplateShared: 188000 << 10, GuestWritten: 13000 << 10, Hypervisor: (20000 + 120000) << 10, Swapped: 64 << 10}
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	// Without a template (resumed from its own state), nothing is the
	// template's.
	s.Template = nil
	if got, _ := d.processMemory(77, s); got.TemplateShared != 0 || got.GuestWritten != 0 || got.Unique != want.Unique {
		t.Errorf("no template: %+v", got)
	}
}

// A booted machine's RAM is an anonymous mapping of its size: the guest's,
// not QEMU's.
func TestHostMemoryLeavesOutAnonymousGuestRAM(t *testing.T) {
	smaps := "7f0000000000-7f0080000000 rw-p 00000000 00:00 0 \nPrivate_Dirty: 900000 kB\n" +
		"7f0080000000-7f0080400000 rw-p 00000000 00:00 0 \nPrivate_Dirty: 4000 kB\n"
	d := &Driver{procRoot: fakeProc(t, 9, smaps)}
	got, err := d.processMemory(9, vm.Spec{Name: "m", MemoryMiB: 2048})
	if err != nil || got.Hypervisor != 4000<<10 || got.Unique != 904000<<10 {
		t.Errorf("%+v %v", got, err)
	}
}

func TestHostMemoryRefuses(t *testing.T) {
	d := &Driver{procRoot: fakeProc(t, 9, "Rss: 1 kB\n")}
	if _, err := d.processMemory(9, vm.Spec{Name: "m"}); err == nil || !strings.Contains(err.Error(), "host memory of m") {
		t.Errorf("bad smaps: %v", err)
	}
	dir := t.TempDir()
	if _, err := d.HostMemory(vm.Spec{Name: "m", Dir: dir}); err == nil || !strings.Contains(err.Error(), "m is not running") {
		t.Errorf("no pid file: %v", err)
	}
	// A live pid that is not this machine's QEMU (this test) is not read.
	if err := os.WriteFile(filepath.Join(dir, PIDFile), []byte(fmt.Sprint(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.HostMemory(vm.Spec{Name: "m", Dir: dir}); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("another process: %v", err)
	}
}
