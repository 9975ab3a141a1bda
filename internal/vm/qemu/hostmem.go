package qemu

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentfleet/agentfleet/internal/procmem"
	"github.com/agentfleet/agentfleet/internal/vm"
)

var _ vm.MemoryReporter = (*Driver)(nil)

// HostMemory reads a running machine's QEMU process's smaps: its private
// pages (TCG's translation cache and QEMU's own heap, and the guest RAM it
// wrote), and the pages of the RAM file it was restored from (a warm
// template's, a prebuild's, a fork's capture) that it shares.
func (d *Driver) HostMemory(s vm.Spec) (vm.HostMemory, error) {
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return vm.HostMemory{}, fmt.Errorf("%s: it is not running", s.Name)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return vm.HostMemory{}, err
	}
	u, err := procmem.Read("/proc", pid, ramFileOf(raw))
	if err != nil {
		return vm.HostMemory{}, fmt.Errorf("%s: %w", s.Name, err)
	}
	return vm.HostMemory{Unique: u.Private, Shared: u.Shared, SharedTemplate: u.FileShared, GuestWritten: u.FilePrivate}, nil
}

// ramFileOf reads the RAM backend's file from a QEMU command line (NUL
// separated): mem-path= of memory-backend-file, its commas doubled.
func ramFileOf(cmdline []byte) string {
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		a := string(arg)
		if !strings.HasPrefix(a, "memory-backend-file,") {
			continue
		}
		_, rest, ok := strings.Cut(a, ",mem-path=")
		if !ok {
			return ""
		}
		// Up to the first single comma (a doubled one is a comma in the path).
		var b strings.Builder
		for i := 0; i < len(rest); i++ {
			if rest[i] == ',' {
				if i+1 < len(rest) && rest[i+1] == ',' {
					b.WriteByte(',')
					i++
					continue
				}
				break
			}
			b.WriteByte(rest[i])
		}
		return b.String()
	}
	return ""
}
