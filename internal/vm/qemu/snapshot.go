package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Suspend and resume are QEMU migration to and from a file. Debian 12's
// QEMU 7.2 has no file: migration URI, so the state goes through
// `exec:cat`. A resumed machine runs the same command line plus
// `-incoming defer`; only paths and ports could differ, and neither is part
// of the saved state. The disk is not in the state: it stays where it is,
// untouched while the machine is suspended.

// migrateTimeout bounds saving or loading one machine's state.
const migrateTimeout = 10 * time.Minute

// Suspend saves a running machine's RAM and device state to its folder and
// ends its QEMU. On failure the machine keeps running.
func (d *Driver) Suspend(ctx context.Context, s vm.Spec) error {
	if s.Share != nil {
		return fmt.Errorf("suspend %s: its shared folder (virtiofs) cannot be saved with the machine; use fleet stop", s.Name)
	}
	if err := d.SaveState(ctx, s, filepath.Join(s.Dir, layout.SuspendFile)); err != nil {
		return fmt.Errorf("suspend %w", err)
	}
	return nil
}

// SaveState stops the guest, saves its state to path (whole, or not at
// all) and ends its QEMU. On failure the guest runs on.
func (d *Driver) SaveState(ctx context.Context, s vm.Spec, path string) error {
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return fmt.Errorf("%s: it is not running", s.Name)
	}
	partial := path + ".partial"
	// QEMU's monitor takes one client at a time: each step has its own.
	qmp := func(cmd string, args any) error {
		q, err := dialQMP(ctx, qmpPath(s.Dir))
		if err != nil {
			return err
		}
		defer q.Close()
		_, err = q.execute(cmd, args)
		return err
	}
	undo := func() {
		_ = qmp("migrate_cancel", nil)
		_ = qmp("cont", nil)
		os.Remove(partial)
	}
	if err := qmp("stop", nil); err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	// A template's RAM already lives in its file: its state holds the
	// devices only. Anything else saves its RAM, whatever this QEMU was
	// told when it was restored (a warm clone's QEMU loaded its template
	// with the capability on, and it stays on until changed).
	if err := qmp("migrate-set-capabilities", ignoreShared(s.MemoryFile != "")); err != nil {
		undo()
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	if err := qmp("migrate", map[string]any{"uri": "exec:cat > " + execx.ShellQuote(partial)}); err != nil {
		undo()
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	if err := waitMigration(ctx, s.Dir); err != nil {
		undo()
		return fmt.Errorf("%s: save the state: %w", s.Name, err)
	}
	for _, f := range []string{partial, s.MemoryFile} {
		if f == "" {
			continue
		}
		if err := syncFile(f); err != nil {
			undo()
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	if err := os.Rename(partial, path); err != nil {
		undo()
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	// The state is safe: the guest never runs again from this process.
	d.kill(pid)
	if !waitExit(context.Background(), pid, s.Dir, 10*time.Second) {
		return fmt.Errorf("%s: qemu (pid %d) did not exit", s.Name, pid)
	}
	stopVirtiofsd(filepath.Join(s.Dir, VirtiofsSocketFile))
	d.cleanupRuntime(s.Dir)
	if s.MemoryFile != "" && !inMemoryFS(s.MemoryFile) {
		// A fork's capture reads every page of a clone's RAM, and a read
		// of a hole of the file it maps allocates and zeroes a page (4-6 s
		// for a 2 GiB guest here): done once now, while the template is
		// made, so a clone's fork finds the file cached. The host may drop
		// it again; the capture then does it. (On tmpfs that would be
		// memory the host cannot reclaim.)
		t0 := time.Now()
		if err := cacheWhole(ctx, s.MemoryFile); err != nil {
			d.Log.Debug("template RAM file not cached", "vm", s.Name, "err", err)
		}
		d.Log.Debug("template RAM file cached", "vm", s.Name, "took", time.Since(t0))
	}
	return nil
}

// Suspended reports whether s has saved state to resume from.
func (d *Driver) Suspended(s vm.Spec) bool {
	_, err := os.Stat(filepath.Join(s.Dir, layout.SuspendFile))
	return err == nil
}

// DiscardSuspended drops s's saved state, so its next start boots from
// the disk (what was in its memory is lost).
func (d *Driver) DiscardSuspended(s vm.Spec) error {
	err := os.Remove(filepath.Join(s.Dir, layout.SuspendFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// restore loads saved state into a QEMU started with -incoming defer and
// waits until the guest runs again. A machine's own suspend state is then
// removed, since its disk has moved on from it; a template's is shared and
// kept. On failure QEMU is killed and the state file kept.
func (d *Driver) restore(ctx context.Context, s vm.Spec, pid int, state string, own, mappedRAM bool) error {
	if err := d.loadState(ctx, s, pid, state, own, mappedRAM); err != nil {
		d.kill(pid)
		waitExit(context.Background(), pid, s.Dir, 10*time.Second)
		d.cleanupRuntime(s.Dir)
		return err
	}
	if !own {
		return nil
	}
	return os.Remove(state)
}

// loadState has s's QEMU load state and waits until the guest runs (a
// clone's guest stays off the network if s says so).
//
// A warm template's state was saved without its RAM, which this QEMU
// maps from the template's file (x-ignore-shared on, which the loader
// must share); a fork's capture holds a RAM section with no guest page
// (the pages are in the file), saved with it off. The state says which.
func (d *Driver) loadState(ctx context.Context, s vm.Spec, pid int, state string, own, mappedRAM bool) error {
	ignore, err := stateIgnoresShared(state)
	if err != nil {
		return err
	}
	if ignore && !mappedRAM {
		return errors.New("the saved state holds no RAM, and this machine maps none")
	}
	q, err := dialQMP(ctx, qmpPath(s.Dir))
	if err != nil {
		return err
	}
	if ignore {
		_, err = q.execute("migrate-set-capabilities", ignoreShared(true))
	}
	if err == nil {
		_, err = q.execute("migrate-incoming", map[string]any{"uri": "exec:cat " + execx.ShellQuote(state)})
	}
	q.Close()
	if err != nil {
		return err
	}
	return waitRunning(ctx, s.Dir, pid, s.Offline && !own)
}

// stateIgnoresShared reads whether a saved state was saved with
// x-ignore-shared on.
func stateIgnoresShared(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	caps, err := stateCapabilities(f)
	if err != nil {
		return false, fmt.Errorf("read the saved state %s: %w", path, err)
	}
	return slices.Contains(caps, "x-ignore-shared"), nil
}

// ignoreShared turns on or off leaving RAM in shared files out of the
// migration stream (QEMU's x-ignore-shared, the capability its VM
// templating uses). It also changes the stream's layout, so saver and
// loader must agree.
func ignoreShared(on bool) map[string]any {
	return map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
}

// waitMigration polls an outgoing migration until it completes.
func waitMigration(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	for {
		st, desc, err := migrationStatus(ctx, dir)
		var ne net.Error
		switch {
		case err != nil && errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			// QEMU sends the last of the state holding its big lock, and
			// its monitor waits for it: a busy host answers late, not
			// never (a dead QEMU refuses the connection).
			st = "answering late"
		case err != nil:
			return err
		case st == "completed":
			return nil
		case st == "failed" || st == "cancelled":
			return fmt.Errorf("migration %s: %s", st, desc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %s: %w", st, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitRunning polls an incoming migration until it completes, then
// continues the guest: the state was saved from a stopped guest, and QEMU
// restores it stopped. QEMU exits when the state cannot be loaded; that is
// reported as such.
func waitRunning(ctx context.Context, dir string, pid int, offline bool) error {
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	for {
		if !ownsProcess(pid, dir) {
			return errors.New("QEMU exited while loading the saved state (the state file is damaged, or was saved by another QEMU build or machine shape)")
		}
		st, desc, err := migrationStatus(ctx, dir)
		switch {
		case err == nil && st == "failed":
			return fmt.Errorf("loading the saved state failed: %s", desc)
		case err == nil && st == "completed":
			q, err := dialQMP(ctx, qmpPath(dir))
			if err != nil {
				return err
			}
			defer q.Close()
			if offline {
				// Down before the guest runs a single instruction.
				if _, err := q.execute("set_link", map[string]any{"name": "net0", "up": false}); err != nil {
					return fmt.Errorf("take the network link down: %w", err)
				}
			}
			if _, err := q.execute("cont", nil); err != nil {
				return err
			}
			if run, err := q.status(); err != nil || run != "running" {
				return fmt.Errorf("the guest does not run after loading its state (%s %v)", run, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the saved state did not load: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func migrationStatus(ctx context.Context, dir string) (status, desc string, err error) {
	q, err := dialQMP(ctx, qmpPath(dir))
	if err != nil {
		return "", "", err
	}
	defer q.Close()
	raw, err := q.execute("query-migrate", nil)
	if err != nil {
		return "", "", err
	}
	var m struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
	}
	err = json.Unmarshal(raw, &m)
	return m.Status, m.ErrorDesc, err
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// StateKey is what saved state depends on: the QEMU build (its version and
// the binary's size and time, so an upgrade changes it), the accelerator,
// the versioned machine type q35 (or virt) stands for in that build, the
// CPU model, the firmware, CPUs, memory, and the network's shape
// (restricted or not, the forwarded guest ports). Paths, host ports and
// the forwards' commands may differ.
func (d *Driver) StateKey(ctx context.Context, s vm.Spec) (string, error) {
	binName := d.binary(s.Arch)
	bin, err := exec.LookPath(binName)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	out, err := d.Runner.Run(ctx, execx.Cmd{Name: binName, Args: []string{"-machine", "help"}})
	if err != nil {
		return "", fmt.Errorf("ask %s for its machine types: %w", binName, err)
	}
	version, err := d.Runner.Run(ctx, execx.Cmd{Name: binName, Args: []string{"--version"}})
	if err != nil {
		return "", err
	}
	ma := MachineArgs{Arch: s.Arch, Accel: d.accel(s.Arch), Restrict: s.Network.Restrict}
	var ports []int
	for _, f := range s.Network.Forwards {
		ports = append(ports, f.GuestPort)
	}
	// ram=file: templates keep RAM in a file their clones map (older
	// templates, whose state held the RAM, never match).
	// A directly started kernel adds its loader ROM: another machine.
	boot := "firmware"
	if s.Boot != nil {
		boot = "kernel"
	}
	board, machine := "q35", ""
	if s.Arch.Or() == vm.ARM64 {
		// The firmware's code is part of the saved machine.
		fw, err := FindFirmware(s.Arch.QEMU(), d.FirmwareDirs)
		if err != nil {
			return "", err
		}
		ffi, err := os.Stat(fw)
		if err != nil {
			return "", err
		}
		board = "virt"
		machine = fmt.Sprintf(" arch=arm64 firmware=%s size=%d mtime=%d", fw, ffi.Size(), ffi.ModTime().Unix())
	}
	return fmt.Sprintf("qemu=%s size=%d mtime=%d accel=%s machine=%s cpu=%s cpus=%d mem=%d ram=file boot=%s restrict=%v forwards=%v%s",
		strings.TrimSpace(strings.SplitN(string(version), "\n", 2)[0]), fi.Size(), fi.ModTime().Unix(), ma.Accel,
		boardAlias(string(out), board), cpuModel(ma), s.CPUs, s.MemoryMiB, boot, s.Network.Restrict, ports, machine), nil
}

// boardAlias reads which versioned machine type board ("q35", "virt")
// stands for from `qemu-system -machine help` ("q35   Standard PC ...
// (alias of pc-q35-7.2)").
func boardAlias(help, board string) string {
	for _, l := range strings.Split(help, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == board {
			if i := strings.Index(l, "alias of "); i >= 0 {
				return strings.TrimSuffix(strings.TrimSpace(l[i+len("alias of "):]), ")")
			}
		}
	}
	return board
}

var _ vm.LinkSetter = (*Driver)(nil)

// SetLink brings the machine's network link up or down (QMP set_link on
// its one NIC's backend).
func (d *Driver) SetLink(ctx context.Context, s vm.Spec, up bool) error {
	if err := qmpRun(ctx, qmpPath(s.Dir), "set_link", map[string]any{"name": "net0", "up": up}); err != nil {
		return fmt.Errorf("%s: set its network link: %w", s.Name, err)
	}
	return nil
}
