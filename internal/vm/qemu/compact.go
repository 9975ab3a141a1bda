package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/procmem"
	"github.com/agentfleet/agentfleet/internal/procx"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Compaction (vm.Compactor) moves a warm clone into a fresh QEMU. A
// clone's process keeps what it built up since its restore: under TCG
// the code it translated (tens of MiB, most of an idle clone's own
// memory), its heap, and the guest pages it wrote. The new process maps
// the same RAM file privately, as the clone's restore did, and loads a
// state that holds the devices and, of the guest RAM, only the pages the
// old process had written (read from its pagemap while it stands still,
// see keepRAM): every other page stays the page cache's, shared with the
// template's other clones. It translates only what the guest runs from
// then on.
//
// The order keeps one of the two processes the machine's at every step,
// and the guest running in at most one: the new process starts beside
// the old one (its disk opened inactive, as an incoming migration's is,
// and its sockets at names of their own); the old one stops and sends
// its state; the new one loads it and stays stopped; the SSH port moves
// over; the new one runs; the old one is ended and the new one's sockets
// take the usual names. Until the new one runs, any failure lets the old
// one go on.

// newSuffix marks the new process's files until the old process is gone.
const newSuffix = "-new"

// Compact moves s into a new QEMU process (see above).
func (d *Driver) Compact(ctx context.Context, s vm.Spec) (vm.Compacted, error) {
	if s.Share != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: its shared folder (virtiofs) cannot move to another process", s.Name)
	}
	pid, err := readPID(filepath.Join(s.Dir, PIDFile))
	if err != nil || !ownsProcess(pid, s.Dir) {
		return vm.Compacted{}, fmt.Errorf("compact %s: it is not running", s.Name)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}
	ramFile := ramFileOf(cmdline)
	if ramFile == "" || !strings.Contains(string(cmdline), ",share=off") {
		return vm.Compacted{}, fmt.Errorf("compact %s: its RAM is not mapped from a template (it booted from its disk, or was resumed from its own saved state): nothing of it is shared to give back", s.Name)
	}
	oldQMP := qmpPath(s.Dir)
	port, err := idlePort(ctx, oldQMP)
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}

	ma, err := d.machineArgs(s)
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}
	final := ma
	ma.QMPSocket += newSuffix
	ma.GuestAgentSocket += newSuffix
	ma.PIDFile += newSuffix
	if ma.ConsoleSocket != "" {
		ma.ConsoleSocket += newSuffix
	}
	ma.MemoryFile, ma.Incoming, ma.StayPaused, ma.NoSSHForward = ramFile, true, true, true
	for _, p := range []string{ma.QMPSocket, ma.GuestAgentSocket, ma.PIDFile, ma.ConsoleSocket} {
		if p != "" {
			_ = os.Remove(p)
		}
	}
	state := filepath.Join(s.Dir, layout.CompactFile)
	_ = os.Remove(state)
	defer os.Remove(state)

	t0 := time.Now()
	if _, err := d.Runner.Run(ctx, execx.Cmd{Name: d.binary(s.Arch), Args: SystemArgs(ma), Env: s.Network.Env}); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: start its new process: %w", s.Name, err)
	}
	npid, err := readPID(ma.PIDFile)
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}
	moved := false
	defer func() {
		if !moved {
			d.kill(npid)
			waitExit(context.Background(), npid, s.Dir, 10*time.Second)
			for _, p := range []string{ma.QMPSocket, ma.GuestAgentSocket, ma.PIDFile, ma.ConsoleSocket} {
				if p != "" {
					_ = os.Remove(p)
				}
			}
		}
	}()
	if ma.ConsoleSocket != "" {
		if err := d.startConsoleLogger(ctx, ma, false); err != nil {
			return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
		}
	}
	// Its disk stays inactive (unlocked) after the load, until cont: the
	// old process may yet have to take it back.
	if err := qmpRun(ctx, ma.QMPSocket, "migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "late-block-activate", "state": true}}}); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}
	d.Log.Debug("compact: new process up", "vm", s.Name, "after", time.Since(t0))

	// The migration reads every page of the guest's RAM, and a read of a
	// hole of the RAM file allocates a page (a fork's capture is sparse):
	// done before the stop, as Capture does, once while the host keeps
	// the file cached (8 s of standing still for a fork child without it).
	if err := cacheWhole(ctx, ramFile); err != nil {
		d.Log.Debug("compact: RAM file not cached", "vm", s.Name, "err", err)
	}
	// From the stop on, the old process runs again on any failure.
	stopped, fwdRemoved := time.Time{}, false
	defer func() {
		if moved || stopped.IsZero() {
			return
		}
		bctx := context.WithoutCancel(ctx)
		if fwdRemoved {
			_ = humanRun(bctx, oldQMP, "hostfwd_add net0 "+sshForward(port), "")
		}
		if err := ensureRunning(bctx, oldQMP); err != nil {
			d.Log.Error("compact: the machine did not run again in its old process", "vm", s.Name, "err", err)
		}
	}()
	if err := qmpRun(ctx, oldQMP, "stop", nil); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w", s.Name, err)
	}
	stopped = time.Now()
	written, err := procmem.WrittenPages("", pid, ramFile, uint64(s.MemoryMiB)<<20)
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: read the pages it wrote: %w", s.Name, err)
	}
	st, err := d.saveKept(ctx, s, state, written.Has)
	if err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: save its state: %w", s.Name, err)
	}
	d.Log.Debug("compact: state saved", "vm", s.Name, "pages kept", st.Pages, "dropped", st.Dropped, "written", written.Count(), "after", time.Since(stopped))
	if err := loadPaused(ctx, ma.QMPSocket, npid, s.Dir, state); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: load its state: %w", s.Name, err)
	}
	// The port moves: out of the old process, into the new one.
	if err := humanRun(ctx, oldQMP, "hostfwd_remove net0 tcp:127.0.0.1:"+fmt.Sprint(port), " removed"); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: free its SSH port: %w", s.Name, err)
	}
	fwdRemoved = true
	if err := humanRun(ctx, ma.QMPSocket, "hostfwd_add net0 "+sshForward(port), ""); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: move its SSH port: %w", s.Name, err)
	}
	if err := qmpRun(ctx, ma.QMPSocket, "cont", nil); err != nil {
		return vm.Compacted{}, fmt.Errorf("compact %s: run it in its new process: %w", s.Name, err)
	}
	// The guest runs in the new process: from here on it is the machine.
	moved = true
	paused := time.Since(stopped)
	d.kill(pid)
	if !waitExit(context.WithoutCancel(ctx), pid, s.Dir, 10*time.Second) {
		d.Log.Error("compact: the old process did not end", "vm", s.Name, "pid", pid)
	}
	// A renamed socket keeps its listener: the usual names now reach the
	// new process.
	var errs []error
	for _, p := range []string{final.QMPSocket, final.GuestAgentSocket, final.PIDFile, final.ConsoleSocket} {
		if p != "" {
			if err := os.Rename(p+newSuffix, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	go d.catchUpClock(context.WithoutCancel(ctx), s)
	d.Log.Debug("compact: done", "vm", s.Name, "paused", paused, "took", time.Since(t0))
	c := vm.Compacted{PID: npid, Paused: paused, KeptBytes: st.Pages * 4096}
	if len(errs) > 0 {
		return c, fmt.Errorf("compact %s: it runs in its new process, but %w", s.Name, errors.Join(errs...))
	}
	return c, nil
}

// saveKept migrates the stopped machine's state into path, keeping of
// the guest RAM only the pages keep names (keepRAM). The old process
// stays stopped, its disk handed over.
func (d *Driver) saveKept(ctx context.Context, s vm.Spec, path string, keep func(off uint64) bool) (SplitStats, error) {
	sock := socketPath(s.Dir, "compact", ".mig")
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return SplitStats{}, err
	}
	defer os.Remove(sock)
	defer ln.Close()
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return SplitStats{}, err
	}
	defer out.Close()
	type result struct {
		st  SplitStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		st, err := keepRAM(c, out, "mem", uint64(s.MemoryMiB)<<20, keep)
		done <- result{st, err}
	}()
	sq := qmpPath(s.Dir)
	fail := func(err error) (SplitStats, error) {
		ln.Close()
		_ = qmpRun(context.WithoutCancel(ctx), sq, "migrate_cancel", nil)
		return SplitStats{}, err
	}
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
		return fail(err)
	}
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		r.err = ctx.Err()
	}
	if r.err != nil {
		return fail(r.err)
	}
	return r.st, out.Close()
}

// loadPaused has the QEMU at sock (pid, started -incoming defer -S) load
// the state at path and waits until it has, its guest still stopped.
func loadPaused(ctx context.Context, sock string, pid int, dir, path string) error {
	if err := qmpRun(ctx, sock, "migrate-incoming", map[string]any{"uri": "exec:cat " + execx.ShellQuote(path)}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	for {
		if !procx.Alive(pid) || !ownsProcess(pid, dir) {
			return errors.New("QEMU exited while loading the state")
		}
		q, err := dialQMP(ctx, sock)
		if err == nil {
			var raw json.RawMessage
			raw, err = q.execute("query-migrate", nil)
			q.Close()
			var m struct {
				Status    string `json:"status"`
				ErrorDesc string `json:"error-desc"`
			}
			if err == nil {
				err = json.Unmarshal(raw, &m)
			}
			switch {
			case err == nil && m.Status == "completed":
				return nil
			case err == nil && m.Status == "failed":
				return fmt.Errorf("loading failed: %s", m.ErrorDesc)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the state did not load: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// humanRun runs one human monitor command; what it prints is its error,
// but for a line saying success (hostfwd_add prints nothing when it
// succeeds, hostfwd_remove "host forwarding rule for ... removed").
func humanRun(ctx context.Context, sock, cmd, success string) error {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return err
	}
	defer q.Close()
	raw, err := q.execute("human-monitor-command", map[string]string{"command-line": cmd})
	if err != nil {
		return err
	}
	var out string
	_ = json.Unmarshal(raw, &out)
	if out = strings.TrimSpace(out); out != "" && (success == "" || !strings.HasSuffix(out, success)) {
		return fmt.Errorf("%s: %s", cmd, out)
	}
	return nil
}

// idlePort reads the machine's SSH port from its user-mode network and
// refuses (vm.ErrBusy) while a TCP connection is open through it: the
// new process's network starts with none, so the guest's side of each
// would be cut.
func idlePort(ctx context.Context, sock string) (int, error) {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return 0, err
	}
	defer q.Close()
	if st, err := q.status(); err != nil || st != "running" {
		return 0, fmt.Errorf("it does not run (%s)", st)
	}
	raw, err := q.execute("human-monitor-command", map[string]string{"command-line": "info usernet"})
	if err != nil {
		return 0, err
	}
	var usernet string
	_ = json.Unmarshal(raw, &usernet)
	port, ok := parseHostFwdPort(usernet)
	if !ok {
		return 0, fmt.Errorf("no SSH port forward in its user network: %q", usernet)
	}
	if open := openConnections(usernet); len(open) > 0 {
		return 0, fmt.Errorf("%w (TCP %s: an SSH session or a proxied call): try again when it has none", vm.ErrBusy, strings.Join(open, ", "))
	}
	return port, nil
}

// usernetTCPRe matches a TCP socket of "info usernet", e.g.
//
//	TCP[ESTABLISHED]   24       127.0.0.1 51302       10.0.2.15    22     0     0
var usernetTCPRe = regexp.MustCompile(`(?m)^\s*TCP\[([A-Z_0-9]+)\]`)

// openConnections lists the states of the TCP connections in "info
// usernet" that data may still flow through toward the guest or from
// it to a reader: being set up, established, or closed by the guest
// only (CLOSE_WAIT: the host may still answer). Not the port forwards'
// listeners, nor connections the host side has closed (FIN_WAIT_*,
// CLOSING, LAST_ACK, TIME_WAIT: nothing reads or writes them again).
func openConnections(usernet string) []string {
	var open []string
	for _, m := range usernetTCPRe.FindAllStringSubmatch(usernet, -1) {
		switch m[1] {
		case "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT":
			open = append(open, m[1])
		case "HOST_FORWARD", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED", "LISTEN":
		default:
			open = append(open, m[1]) // a state not known here: kept safe
		}
	}
	return open
}
