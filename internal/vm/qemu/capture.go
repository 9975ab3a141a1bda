package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Capture (fork) turns a running machine into a template without ending
// it. While the source stands still its disk is copied (stop has flushed
// it) and its RAM and devices migrate over a unix socket to this process,
// which writes the stream to a file leaving out the guest RAM's zero
// pages (see dropZeroPages); then the source goes on. QEMU 7.2 cannot
// write RAM straight into a file clones could map, so a second QEMU, the
// receiver, loads the stream with its RAM in the template's memory file
// (shared, so the pages land in the file) and, never running the guest,
// saves the device state alone. The result is a template like a warm
// template: disk (an overlay on the source's backing file), memory, state.

// receiverFolder is the receiver's own folder inside the capture folder,
// removed when it is done.
const receiverFolder = ".receiver"

// unlimitedBandwidth lifts QEMU's migration rate limit (32 MiB/s by
// default), and longDowntime lets the stopped source send everything in
// one pass: it writes nothing meanwhile.
const (
	unlimitedBandwidth = int64(1) << 40
	longDowntimeMS     = 600_000
)

// Capture pauses s, captures its disk, RAM and device state into dir and
// lets it go on. On failure s goes on and dir is removed.
func (d *Driver) Capture(ctx context.Context, s vm.Spec, dir string) (vm.Captured, error) {
	if s.Share != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: its shared folder (virtiofs) cannot be captured with the machine", s.Name)
	}
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return vm.Captured{}, fmt.Errorf("fork %s: it is not running", s.Name)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	tpl := vm.Template{Disk: filepath.Join(dir, layout.TemplateDisk), Memory: filepath.Join(dir, layout.TemplateMemory), State: filepath.Join(dir, layout.TemplateState)}
	rdir := filepath.Join(dir, receiverFolder)
	if err := os.Mkdir(rdir, 0o700); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	stream := filepath.Join(rdir, "stream")
	// The migration reads every page of the guest's RAM, and a read of a
	// hole of the RAM file it maps allocates a page: done here, before
	// the pause, and once per template while the host keeps them cached.
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		if f := ramFileOf(raw); f != "" {
			t0 := time.Now()
			if err := cacheWhole(ctx, f); err != nil {
				d.Log.Debug("capture: RAM file not cached", "vm", s.Name, "err", err)
			}
			d.Log.Debug("capture: RAM file cached", "vm", s.Name, "took", time.Since(t0))
		}
	}
	paused, err := d.saveStream(ctx, s, tpl.Disk, stream)
	if err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	d.catchUpClock(ctx, s)
	recv, err := d.startReceiver(ctx, s, rdir, tpl.Memory, stream)
	if err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	defer recv.end(d)
	d.Log.Debug("capture: receiver started", "vm", s.Name)
	if err := recv.saveDevices(ctx, tpl.State); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	for _, f := range []string{tpl.Disk, tpl.Memory, tpl.State} {
		if err := syncFile(f); err != nil {
			return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
		}
	}
	recv.end(d)
	d.Log.Debug("capture: device state saved", "vm", s.Name)
	// It holds the source's RAM (its keys, its token): its owner's only.
	for _, f := range []string{tpl.Disk, tpl.Memory, tpl.State} {
		if err := os.Chmod(f, 0o600); err != nil {
			return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
		}
	}
	if err := os.RemoveAll(recv.dir); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	var ram int64
	if fi, err := os.Stat(tpl.Memory); err == nil {
		ram = allocatedBytes(fi)
	}
	ok = true
	return vm.Captured{Template: tpl, Paused: paused, RAMBytes: ram}, nil
}

// receiver is the QEMU that takes a capture's RAM into its file.
type receiver struct {
	dir, qmp string
	pid      int
}

// startReceiver starts a QEMU of s's shape loading stream, its RAM backed
// by memFile (shared). Its disks are empty files of the right
// size: it never runs the guest, so it never reads them.
func (d *Driver) startReceiver(ctx context.Context, s vm.Spec, dir, memFile, stream string) (*receiver, error) {
	size, err := d.virtualSize(ctx, filepath.Join(s.Dir, DiskFile))
	if err != nil {
		return nil, err
	}
	disk := filepath.Join(dir, DiskFile)
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.ImgBin, Args: []string{"create", "-q", "-f", "qcow2", disk, fmt.Sprint(size)}}); err != nil {
		return nil, fmt.Errorf("the receiver's disk: %w", err)
	}
	seed := filepath.Join(dir, SeedFile)
	if err := os.WriteFile(seed, make([]byte, 64<<10), 0o600); err != nil {
		return nil, err
	}
	r := &receiver{dir: dir, qmp: qmpPath(dir)}
	ma := MachineArgs{
		Name: s.Name + "-capture", Arch: s.Arch, Accel: d.accel(s.Arch), CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
		Disk: disk, Seed: seed, QMPSocket: r.qmp, GuestAgentSocket: qgaPath(dir),
		SerialLog: filepath.Join(dir, SerialFile), PIDFile: filepath.Join(dir, PIDFile),
		Restrict: s.Network.Restrict, Incoming: true, MemoryFile: memFile, MemoryShared: true,
	}
	for _, f := range s.Network.Forwards {
		// The guest never runs here, so no forward is ever used.
		ma.Forwards = append(ma.Forwards, Forward{Port: f.GuestPort, Command: "false"})
	}
	if s.Arch.Or() == vm.ARM64 {
		if ma.Firmware, err = FindFirmware(s.Arch.QEMU(), d.FirmwareDirs); err != nil {
			return nil, err
		}
	}
	if s.Boot != nil {
		ma.Kernel, ma.Initrd, ma.Append = s.Boot.Kernel, s.Boot.Initrd, s.Boot.Cmdline
	}
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.binary(s.Arch), Args: SystemArgs(ma)}); err != nil {
		return nil, fmt.Errorf("start the receiver: %w", err)
	}
	if r.pid, err = readPID(ma.PIDFile); err != nil {
		return nil, fmt.Errorf("start the receiver: %w", err)
	}
	if err := qmpRun(ctx, r.qmp, "migrate-set-capabilities", ignoreShared(false)); err != nil {
		r.end(d)
		return nil, err
	}
	if err := qmpRun(ctx, r.qmp, "migrate-incoming", map[string]any{"uri": "exec:cat " + execx.ShellQuote(stream)}); err != nil {
		r.end(d)
		return nil, err
	}
	return r, nil
}

// saveStream is the pause: stop s, copy its disk to diskCopy, migrate its
// RAM and devices to stream (less the RAM's zero pages), continue s. It
// returns how long s stood still. s goes on whatever happens.
func (d *Driver) saveStream(ctx context.Context, s vm.Spec, diskCopy, stream string) (paused time.Duration, err error) {
	sock := socketPath(filepath.Dir(stream), "migrate", ".mig")
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return 0, err
	}
	defer os.Remove(sock)
	defer ln.Close()
	out, err := os.OpenFile(stream, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	// The source connects once; its stream is filtered into the file as
	// it comes.
	filtered := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			filtered <- err
			return
		}
		defer c.Close()
		dropped, err := dropZeroPages(c, out, "mem")
		d.Log.Debug("capture: stream filtered", "vm", s.Name, "zero pages left out", dropped, "err", err)
		filtered <- err
	}()
	sq := qmpPath(s.Dir)
	t0 := time.Now()
	// From the stop on, whatever happens (a reply lost, a failed step), the
	// source runs again before this returns, or the error says it does not.
	defer func() {
		if rerr := ensureRunning(context.WithoutCancel(ctx), sq); rerr != nil {
			err = errors.Join(err, fmt.Errorf("%s did not run again after the capture: %w (fleet start %s)", s.Name, rerr, s.Name))
		}
	}()
	// stop drains and flushes every disk: the copy is what the guest saw.
	if err := qmpRun(ctx, sq, "stop", nil); err != nil {
		return 0, err
	}
	fail := func(err error) (time.Duration, error) {
		ln.Close()
		// The filter's own error says more than the broken pipe.
		select {
		case ferr := <-filtered:
			if ferr != nil {
				err = fmt.Errorf("%w (the stream: %v)", err, ferr)
			}
		default:
		}
		_ = qmpRun(context.WithoutCancel(ctx), sq, "migrate_cancel", nil)
		return 0, err
	}
	if err := copyFile(filepath.Join(s.Dir, DiskFile), diskCopy); err != nil {
		return fail(fmt.Errorf("copy the disk: %w", err))
	}
	d.Log.Debug("capture: disk copied", "vm", s.Name, "after", time.Since(t0))
	if err := qmpRun(ctx, sq, "migrate-set-capabilities", ignoreShared(false)); err != nil {
		return fail(err)
	}
	if err := qmpRun(ctx, sq, "migrate-set-parameters", map[string]any{"max-bandwidth": unlimitedBandwidth, "downtime-limit": longDowntimeMS}); err != nil {
		return fail(err)
	}
	if err := qmpRun(ctx, sq, "migrate", map[string]any{"uri": "unix:" + sock}); err != nil {
		return fail(err)
	}
	if err := waitMigration(ctx, s.Dir); err != nil {
		return fail(fmt.Errorf("send the state: %w", err))
	}
	select {
	case err = <-filtered:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		return fail(fmt.Errorf("save the state: %w", err))
	}
	d.Log.Debug("capture: state saved", "vm", s.Name, "after", time.Since(t0))
	// After a completed migration the source's disks are handed over;
	// cont takes them back and runs the guest on.
	if err := qmpRun(context.WithoutCancel(ctx), sq, "cont", nil); err != nil {
		return 0, fmt.Errorf("continue after the capture: %w", err)
	}
	return time.Since(t0), out.Close()
}

// saveDevices waits until r holds the state, then saves its device state
// alone (its RAM is in its file) to path.
func (r *receiver) saveDevices(ctx context.Context, path string) error {
	wctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	for {
		if !ownsProcess(r.pid, r.dir) {
			return errors.New("the receiver exited while loading the state")
		}
		st, desc, err := migrationStatus(wctx, r.dir)
		if err == nil && st == "failed" {
			return fmt.Errorf("the receiver could not load the state: %s", desc)
		}
		if err == nil && st == "completed" {
			break
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("the receiver did not load the state: %w", wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	partial := path + ".partial"
	if err := qmpRun(ctx, r.qmp, "migrate-set-capabilities", ignoreShared(true)); err != nil {
		return err
	}
	if err := qmpRun(ctx, r.qmp, "migrate", map[string]any{"uri": "exec:cat > " + execx.ShellQuote(partial)}); err != nil {
		return err
	}
	if err := waitMigration(ctx, r.dir); err != nil {
		return fmt.Errorf("save the device state: %w", err)
	}
	if err := syncFile(partial); err != nil {
		return err
	}
	return os.Rename(partial, path)
}

// end kills the receiver (it never ran the guest) and waits for it.
func (r *receiver) end(d *Driver) {
	if r.pid > 0 && ownsProcess(r.pid, r.dir) {
		d.kill(r.pid)
		waitExit(context.Background(), r.pid, r.dir, 10*time.Second)
	}
	r.pid = 0
	d.cleanupRuntime(r.dir)
}

// qmpRun runs one QMP command on its own connection (QEMU's monitor takes
// one client at a time).
func qmpRun(ctx context.Context, sock, cmd string, args any) error {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return err
	}
	defer q.Close()
	_, err = q.execute(cmd, args)
	return err
}

// virtualSize is a qcow2 disk's size as the guest sees it, read while its
// QEMU holds it (-U).
func (d *Driver) virtualSize(ctx context.Context, disk string) (int64, error) {
	out, err := d.Runner.Run(ctx, execx.Cmd{Name: d.ImgBin, Args: []string{"info", "-U", "--output=json", disk}})
	if err != nil {
		return 0, fmt.Errorf("read the disk's size: %w", err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize <= 0 {
		return 0, fmt.Errorf("read the disk's size: qemu-img info said %.200q", out)
	}
	return info.VirtualSize, nil
}

// copyFile copies a file whole (in the kernel where it can: Go's io.Copy
// between files uses copy_file_range), owner-only.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// allocatedBytes is what a (sparse) file takes on disk.
func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// catchUpClock sets a guest's clock to the host's after it stood still
// (its clock stood still with it), over the guest agent; a guest without
// one is left to its own time sync.
func (d *Driver) catchUpClock(ctx context.Context, s vm.Spec) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := dialQGA(cctx, s.Dir)
	if err != nil {
		d.Log.Debug("capture: clock not set", "vm", s.Name, "err", err)
		return
	}
	defer q.Close()
	if err := q.execute("guest-set-time", map[string]any{"time": time.Now().UnixNano()}, nil); err != nil {
		d.Log.Debug("capture: clock not set", "vm", s.Name, "err", err)
	}
}

// cacheWhole reads a file through the page cache, holes included.
func cacheWhole(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := f.Read(buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
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

// ensureRunning makes a machine whose guest was stopped run again: it
// asks QEMU its state and continues it until it runs, for up to 10 s
// (QEMU's monitor takes one client at a time, and fleet ls may hold it).
func ensureRunning(ctx context.Context, sock string) error {
	var last error
	for i := 0; i < 40; i++ {
		q, err := dialQMP(ctx, sock)
		if err == nil {
			st, serr := q.status()
			if serr == nil && st == "running" {
				q.Close()
				return nil
			}
			if serr == nil {
				_, err = q.execute("cont", nil)
			} else {
				err = serr
			}
			q.Close()
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	return last
}
