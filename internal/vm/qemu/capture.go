package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Capture (fork) turns a running machine into a template without ending
// it. While the source stands still its disk is copied (stop has flushed
// it) and its RAM and devices migrate over a unix socket to this process,
// which splits the stream as it comes (see splitRAM): the guest RAM's
// pages go into the template's memory file, at their offsets, and the
// rest is the template's state; then the source goes on. The result is a
// template like a warm template, disk (an overlay on the source's backing
// file), memory and state, except that its state was saved with
// x-ignore-shared off, and says so (restore reads it).
//
// (QEMU 7.2 cannot write RAM into a file clones could map; before
// splitRAM a second QEMU loaded the stream into such a file and saved
// its devices again, 2.5 s of a fork.)

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
	partial := tpl.State + ".partial"
	paused, err := d.saveSplit(ctx, s, tpl.Disk, partial, tpl.Memory)
	if err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	// Off the fork's path: the clock's catch-up execs hwclock in the
	// guest (most of a second under emulation while the children start),
	// and a source whose clock lags a second is no hazard meanwhile.
	go d.catchUpClock(context.WithoutCancel(ctx), s)
	// Clones' disks link to the disk copy, so it is on disk before any
	// exists. Memory and state are synced by a caller that keeps them
	// past this boot (see vm.Forker).
	if err := syncFile(tpl.Disk); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	if err := os.Rename(partial, tpl.State); err != nil {
		return vm.Captured{}, fmt.Errorf("fork %s: %w", s.Name, err)
	}
	d.Log.Debug("capture: saved", "vm", s.Name)
	var ram int64
	if fi, err := os.Stat(tpl.Memory); err == nil {
		ram = allocatedBytes(fi)
	}
	ok = true
	return vm.Captured{Template: tpl, Paused: paused, RAMBytes: ram}, nil
}

// saveSplit is the pause: stop s, copy its disk to diskCopy, migrate its
// RAM and devices, the RAM's pages into memFile and the rest to state,
// continue s. It returns how long s stood still. s goes on whatever
// happens. Both files are new (their owner's only).
func (d *Driver) saveSplit(ctx context.Context, s vm.Spec, diskCopy, state, memFile string) (paused time.Duration, err error) {
	sock := socketPath(filepath.Dir(state), "migrate", ".mig")
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return 0, err
	}
	defer os.Remove(sock)
	defer ln.Close()
	out, err := os.OpenFile(state, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	ram, err := os.OpenFile(memFile, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer ram.Close()
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
		st, err := splitRAM(c, out, ram, "mem", uint64(s.MemoryMiB)<<20)
		d.Log.Debug("capture: stream split", "vm", s.Name, "pages", st.Pages, "zero pages left out", st.ZeroPages, "err", err)
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
	paused = time.Since(t0)
	if err := ram.Close(); err != nil {
		return paused, err
	}
	return paused, out.Close()
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

// cacheWhole has a file in the page cache whole, holes included: by the
// platform's fastest way (cacheMapped), else by reading it.
func cacheWhole(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if done, err := cacheMapped(ctx, f); done || err != nil {
		return err
	}
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
