// Package qemu is the QEMU driver: qcow2 overlays as linked clones, a
// daemonized qemu-system per machine (so machines outlive the fleet
// command), QMP for state and graceful shutdown, user-mode networking with
// an SSH forward on a port QEMU picks itself.
package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/procx"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/go-hclog"
)

// Files inside a machine's folder (all named in internal/layout).
const (
	DiskFile   = layout.DiskFile
	SeedFile   = layout.SeedFile
	SerialFile = layout.SerialFile
	PIDFile    = layout.PIDFile
	qmpFile    = layout.QMPFile
)

// Driver runs machines with qemu-system-x86_64 and qemu-system-aarch64.
type Driver struct {
	Runner execx.Runner
	// Accel runs guests of the host's architecture; any other runs under
	// TCG, whatever Accel says.
	Accel       Accel
	Binary      string // qemu-system binary for amd64 guests, default qemu-system-x86_64
	ARM64Binary string // for arm64 guests, default qemu-system-aarch64
	ImgBin      string // qemu-img binary, default qemu-img
	// FirmwareDirs are searched for arm64 guests' UEFI firmware
	// descriptors (default FirmwareDirs).
	FirmwareDirs []string
	// ConsoleCommand, if set, is the argv of the console logger (the
	// fleet binary and ConsoleCommand): machines' consoles are then
	// capped and rotated. Unset (the builder's own machines), a console
	// is a plain file.
	ConsoleCommand []string
	Log            hclog.Logger
	// TCGCacheMiB, if not 0, sizes TCG's translation cache for guests
	// under emulation (MachineArgs.TBSizeMiB); 0 is QEMU's default. Set
	// from TCGCacheEnv so benches can weigh memory against speed; the
	// default stays QEMU's until they have.
	TCGCacheMiB int
	// procRoot is where processes are read ("" is /proc): a test's fake.
	procRoot string
}

// New returns a driver with the given accelerator ("" picks the fastest).
func New(r execx.Runner, accel Accel, log hclog.Logger) *Driver {
	if accel == "" {
		accel = DetectAccel()
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Driver{Runner: r, Accel: accel, Binary: "qemu-system-x86_64", ARM64Binary: "qemu-system-aarch64",
		ImgBin: "qemu-img", FirmwareDirs: FirmwareDirs, Log: log.Named("qemu")}
}

// binary is the qemu-system program for guests of arch.
func (d *Driver) binary(arch vm.Arch) string {
	if arch.Or() == vm.ARM64 {
		return d.ARM64Binary
	}
	return d.Binary
}

// accel is the accelerator for guests of arch: the driver's for the
// host's own architecture, software emulation for any other.
func (d *Driver) accel(arch vm.Arch) Accel {
	if arch.Or() != vm.HostArch() {
		return AccelTCG
	}
	return d.Accel
}

// ValidateArch checks the emulator and, for arm64, the UEFI firmware that
// guests of arch need.
func (d *Driver) ValidateArch(ctx context.Context, arch vm.Arch) error {
	if arch.Or() == vm.AMD64 {
		return d.Validate(ctx)
	}
	if _, err := exec.LookPath(d.ARM64Binary); err != nil {
		return fmt.Errorf("%s is not installed, and arm64 machines need it (%s)", d.ARM64Binary, installHint(pkgARM64))
	}
	if _, err := FindFirmware(arch.QEMU(), d.FirmwareDirs); err != nil {
		return err
	}
	if _, err := exec.LookPath(d.ImgBin); err != nil {
		return fmt.Errorf("%s is not installed (%s)", d.ImgBin, installHint(pkgImg))
	}
	return nil
}

var (
	_ vm.Driver         = (*Driver)(nil)
	_ vm.Snapshotter    = (*Driver)(nil)
	_ vm.Forker         = (*Driver)(nil)
	_ vm.GuestAgent     = (*Driver)(nil)
	_ vm.ArchValidator  = (*Driver)(nil)
	_ vm.ShareValidator = (*Driver)(nil)
	_ vm.MemoryReporter = (*Driver)(nil)
)

func (d *Driver) Name() string { return "qemu" }

// shareTag is the virtiofs tag (vhost-user-fs-pci tag=) the guest mounts.
const shareTag = "workspace"

// Capabilities: boot timeouts by accelerator (guests of another
// architecture always run under TCG); virtiofs shares need no mount
// options (the host side enforces read-only).
func (d *Driver) Capabilities() vm.Capabilities {
	return vm.Capabilities{ImageFormat: "qcow2", BootTimeout: BootTimeout(d.Accel), EmulatedBootTimeout: BootTimeout(AccelTCG),
		Snapshots: true, LinkedClones: true, SharedFolders: true, ShareFS: "virtiofs", ShareTag: shareTag, ForwardIP: ForwardIP,
		Arches: vm.Arches, Accelerated: d.Accel != AccelTCG}
}

// Validate checks that qemu-system and qemu-img are on PATH.
func (d *Driver) Validate(ctx context.Context) error {
	for _, bin := range []string{d.Binary, d.ImgBin} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed (%s)", bin, installHint(pkgAMD64))
		}
	}
	return nil
}

// Create makes the overlay disk and the seed ISO.
func (d *Driver) Create(ctx context.Context, s vm.Spec) error {
	base := s.BaseImage
	if s.Template != nil {
		base = s.Template.Disk // a warm template's frozen disk, never the base
	}
	if _, err := os.Stat(base); err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	disk := filepath.Join(s.Dir, DiskFile)
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.ImgBin, Args: OverlayArgs(base, disk)}); err != nil {
		return fmt.Errorf("create linked clone for %s: %w", s.Name, err)
	}
	if err := vm.WriteSeedISO(filepath.Join(s.Dir, SeedFile), s.Seed); err != nil {
		return fmt.Errorf("write seed for %s: %w", s.Name, err)
	}
	return nil
}

// qmpPath returns the QMP socket path. Unix socket paths are limited to
// about 104 bytes, so long machine folders get a short path under the
// system temp dir, derived from the folder so it is stable.
func qmpPath(dir string) string { return socketPath(dir, qmpFile, ".qmp") }

// qgaPath is the guest agent's socket, short like qmpPath.
func qgaPath(dir string) string { return socketPath(dir, layout.GuestAgentFile, ".qga") }

func socketPath(dir, name, ext string) string {
	p := filepath.Join(dir, name)
	if len(p) < 100 {
		return p
	}
	h := sha256.Sum256([]byte(dir))
	return filepath.Join(os.TempDir(), "fleet-"+hex.EncodeToString(h[:8])+ext)
}

// Start boots the machine and reads back its SSH port.
func (d *Driver) Start(ctx context.Context, s vm.Spec) (vm.Runtime, error) {
	disk := filepath.Join(s.Dir, DiskFile)
	if _, err := os.Stat(disk); err != nil {
		return vm.Runtime{}, fmt.Errorf("%s: %w", s.Name, vm.ErrNotCreated)
	}
	if st, err := d.Status(ctx, s); err == nil && st.Power == vm.PowerOn {
		if st.Paused != "" {
			if err := d.cont(ctx, s); err != nil {
				return vm.Runtime{}, fmt.Errorf("continue %s (paused: %s): %w", s.Name, st.Paused, err)
			}
		}
		return st.Runtime, nil
	}
	ma, err := d.machineArgs(s)
	if err != nil {
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
	}
	sock, pidf := ma.QMPSocket, ma.PIDFile
	_ = os.Remove(sock)
	_ = os.Remove(pidf)
	if ma.ConsoleSocket != "" {
		_ = os.Remove(ma.ConsoleSocket)
		ma.Paused = true // until the logger listens
	}
	// A suspended machine resumes from its own state (RAM included); a
	// new clone of a warm template maps the template's RAM file and loads
	// only its device state.
	state, own := "", false
	switch {
	case d.Suspended(s):
		state, own = filepath.Join(s.Dir, layout.SuspendFile), true
	case s.Template != nil:
		state, ma.MemoryFile = s.Template.State, s.Template.Memory
	case s.MemoryFile != "":
		ma.MemoryFile, ma.MemoryShared = s.MemoryFile, true
	}
	ma.Incoming = state != ""
	if s.Share != nil {
		vfs, err := d.startVirtiofsd(ctx, s)
		if err != nil {
			return vm.Runtime{}, err
		}
		ma.VirtiofsSocket = vfs
	}
	args := SystemArgs(ma)
	d.Log.Debug("starting", "vm", s.Name, "arch", s.Arch.Or(), "accel", ma.Accel)
	// -daemonize: the command returns once the guest is set up; QEMU's
	// errors (bad disk, no accelerator) arrive here before it detaches.
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.binary(s.Arch), Args: args, Env: s.Network.Env}); err != nil {
		stopVirtiofsd(ma.VirtiofsSocket)
		if ma.Incoming {
			return vm.Runtime{}, fmt.Errorf("resume %s: QEMU exited before it could load the saved state %s: %w", s.Name, state, err)
		}
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
	}
	pid, err := readPID(pidf)
	if err != nil {
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
	}
	if ma.ConsoleSocket != "" {
		if err := d.startConsoleLogger(ctx, ma, !ma.Incoming); err != nil {
			d.kill(pid)
			return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
		}
	}
	if ma.Incoming {
		if err := d.restore(ctx, s, pid, state, own, ma.MemoryFile != ""); err != nil {
			return vm.Runtime{}, fmt.Errorf("resume %s from %s: %w", s.Name, state, err)
		}
	}
	q, err := dialQMP(ctx, sock)
	if err != nil {
		d.kill(pid)
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
	}
	defer q.Close()
	port, err := q.sshPort()
	if err != nil {
		d.kill(pid)
		return vm.Runtime{}, fmt.Errorf("start %s: %w", s.Name, err)
	}
	return vm.Runtime{SSHAddr: fmt.Sprintf("127.0.0.1:%d", port), PID: pid}, nil
}

// machineArgs is s's command line as every start of it has it: its
// files, sockets, shape and network, and the kernel it boots; what it
// starts from (a template, its own saved state, a fresh boot) is the
// caller's.
func (d *Driver) machineArgs(s vm.Spec) (MachineArgs, error) {
	ma := MachineArgs{
		Name: s.Name, Arch: s.Arch, Accel: d.accel(s.Arch), TBSizeMiB: d.TCGCacheMiB, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
		Disk: filepath.Join(s.Dir, DiskFile), Seed: filepath.Join(s.Dir, SeedFile),
		QMPSocket: qmpPath(s.Dir), GuestAgentSocket: qgaPath(s.Dir), SerialLog: filepath.Join(s.Dir, SerialFile), PIDFile: filepath.Join(s.Dir, PIDFile),
		Restrict: s.Network.Restrict,
	}
	if len(d.ConsoleCommand) > 0 {
		ma.ConsoleSocket = socketPath(s.Dir, layout.ConsoleSocket, ".con")
	}
	if s.Arch.Or() == vm.ARM64 {
		fw, err := FindFirmware(s.Arch.QEMU(), d.FirmwareDirs)
		if err != nil {
			return MachineArgs{}, err
		}
		ma.Firmware = fw
	}
	if s.Boot != nil {
		ma.Kernel, ma.Initrd, ma.Append = s.Boot.Kernel, s.Boot.Initrd, s.Boot.Cmdline
	}
	for _, f := range s.Network.Forwards {
		ma.Forwards = append(ma.Forwards, Forward{Port: f.GuestPort, Command: shellJoin(f.Command)})
	}
	return ma, nil
}

// Status checks the QEMU process and asks it over QMP for its state.
func (d *Driver) Status(ctx context.Context, s vm.Spec) (vm.Status, error) {
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return vm.Status{Power: vm.PowerOff}, nil
	}
	q, err := dialQMP(ctx, qmpPath(s.Dir))
	if err != nil {
		// The process exists but does not answer: report it on, without
		// an address; Stop or Delete will deal with it.
		return vm.Status{Power: vm.PowerOn, Runtime: vm.Runtime{PID: pid}}, nil
	}
	defer q.Close()
	rt := vm.Runtime{PID: pid}
	if port, err := q.sshPort(); err == nil {
		rt.SSHAddr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	st := vm.Status{Power: vm.PowerOn, Runtime: rt}
	if run, err := q.status(); err == nil {
		st.Paused = pausedReason(run)
	}
	return st, nil
}

// pausedReason reads QMP's run state: "" while the guest runs (or is
// being set up), else why it does not.
func pausedReason(run string) string {
	switch run {
	case "running", "prelaunch", "inmigrate", "finish-migrate", "postmigrate":
		return ""
	case "io-error":
		// werror=enospc (QEMU's default) stops the guest on a full host
		// disk instead of failing its write.
		return vm.PausedDiskFull
	}
	return run
}

// cont resumes a paused guest; the write that stopped it is retried.
func (d *Driver) cont(ctx context.Context, s vm.Spec) error {
	q, err := dialQMP(ctx, qmpPath(s.Dir))
	if err != nil {
		return err
	}
	defer q.Close()
	_, err = q.execute("cont", nil)
	return err
}

// Stop sends an ACPI power-down and waits up to grace for the guest to
// halt, then kills QEMU.
func (d *Driver) Stop(ctx context.Context, s vm.Spec, grace time.Duration) error {
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return nil
	}
	if q, err := dialQMP(ctx, qmpPath(s.Dir)); err == nil {
		_, err = q.execute("system_powerdown", nil)
		q.Close()
		if err == nil && waitExit(ctx, pid, s.Dir, grace) {
			d.cleanupRuntime(s.Dir)
			return nil
		}
		d.Log.Warn("guest did not power off in time; killing", "vm", s.Name, "grace", grace)
	}
	d.kill(pid)
	if !waitExit(context.Background(), pid, s.Dir, 10*time.Second) {
		return fmt.Errorf("stop %s: qemu (pid %d) did not exit", s.Name, pid)
	}
	d.cleanupRuntime(s.Dir)
	return nil
}

// Delete kills the machine and removes its folder.
func (d *Driver) Delete(ctx context.Context, s vm.Spec) error {
	if pid, err := readPID(filepath.Join(s.Dir, PIDFile)); err == nil && ownsProcess(pid, s.Dir) {
		d.kill(pid)
		if !waitExit(context.Background(), pid, s.Dir, 10*time.Second) {
			return fmt.Errorf("delete %s: qemu (pid %d) did not exit", s.Name, pid)
		}
	}
	stopVirtiofsd(filepath.Join(s.Dir, VirtiofsSocketFile))
	stopConsoleLogger(s.Dir)
	_ = os.Remove(qmpPath(s.Dir))
	_ = os.Remove(qgaPath(s.Dir))
	if err := os.RemoveAll(s.Dir); err != nil {
		return fmt.Errorf("delete %s: %w", s.Name, err)
	}
	return nil
}

func (d *Driver) cleanupRuntime(dir string) {
	stopConsoleLogger(dir)
	_ = os.Remove(qmpPath(dir))
	_ = os.Remove(qgaPath(dir))
	_ = os.Remove(socketPath(dir, layout.ConsoleSocket, ".con"))
	_ = os.Remove(filepath.Join(dir, PIDFile))
}

func (d *Driver) kill(pid int) { _ = syscall.Kill(pid, syscall.SIGKILL) }

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid file %s", path)
	}
	return pid, nil
}

// ownsProcess says whether pid is alive and is this machine's QEMU (its
// command line names the machine folder), so a recycled PID is never
// mistaken for, or killed as, a machine.
func ownsProcess(pid int, dir string) bool {
	if !procx.Alive(pid) {
		return false
	}
	cmdline, err := procx.Cmdline(pid)
	if err != nil {
		return false
	}
	return strings.Contains(cmdline, filepath.Join(dir, DiskFile))
}

func waitExit(ctx context.Context, pid int, dir string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if !ownsProcess(pid, dir) {
			return true
		}
		select {
		case <-ctx.Done():
			return !ownsProcess(pid, dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return !ownsProcess(pid, dir)
}

// shellJoin quotes a forward's argv for g_shell_parse_argv, which follows
// POSIX shell quoting.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = execx.ShellQuote(a)
	}
	return strings.Join(q, " ")
}
