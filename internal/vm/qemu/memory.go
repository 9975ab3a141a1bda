package qemu

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/procmem"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// HostMemory reads the machine's QEMU process's smaps. A warm clone's RAM
// is the template's file mapped privately: its shared pages are the
// template's, its dirty ones what the guest wrote. A machine's RAM in
// anonymous memory (booted, or resumed from its own state) is told from
// QEMU's own by its size, so Hypervisor is QEMU's alone either way.
func (d *Driver) HostMemory(s vm.Spec) (vm.HostMemory, error) {
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return vm.HostMemory{}, fmt.Errorf("%s is not running", s.Name)
	}
	return d.processMemory(pid, s)
}

// processMemory accounts pid's smaps (under d.procRoot) for s.
func (d *Driver) processMemory(pid int, s vm.Spec) (vm.HostMemory, error) {
	u, err := procmem.ReadPID(d.procRoot, pid)
	if err != nil {
		return vm.HostMemory{}, fmt.Errorf("host memory of %s: %w", s.Name, err)
	}
	m := vm.HostMemory{Unique: u.Unique(), Shared: u.Shared(), Swapped: u.Swapped(),
		Hypervisor: u.AnonExcept(uint64(max(s.MemoryMiB, 0)) << 20)}
	file := ""
	if s.Template != nil {
		file = s.Template.Memory
	} else {
		// A fork's child or a prebuild's clone: the RAM file its QEMU maps.
		root := d.procRoot
		if root == "" {
			root = "/proc"
		}
		if raw, err := os.ReadFile(fmt.Sprintf("%s/%d/cmdline", root, pid)); err == nil {
			file = ramFileOf(raw)
		}
	}
	if file != "" {
		// The kernel names mappings by their resolved path.
		if r, err := filepath.EvalSymlinks(file); err == nil {
			file = r
		}
		m.TemplateShared, m.GuestWritten = u.SharedWith(file), u.WrittenIn(file)
	}
	return m, nil
}
