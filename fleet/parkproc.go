package fleet

// The idle parker's process and its locks, below everything that starts
// machines: `fleet __park FLEET` (ParkCommand), at most one per fleet,
// started detached by the commands that start a machine with
// idle_suspend. park.go is what it does.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/filelock"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/session"
)

// ParkCommand is the hidden subcommand that runs a fleet's idle parker.
const ParkCommand = "__park"

// parkerFile is one of the parker's files in c's fleet folder.
func parkerFile(c *Controller, name string) string {
	return filepath.Join(c.Layout.FleetDir(c.Fleet), name)
}

// ensureParker starts the fleet's idle parker unless one runs, saying
// why not if it cannot: parking is a saving, never a reason to fail the
// command. The caller holds the fleet lock and saves the state it changed
// before it lets go: the parker's first read of the state, and its
// decision to exit, take that lock, so neither misses what it saved.
func ensureParker(c *Controller) {
	if err := startParker(c); err != nil {
		c.say("warning: idle machines will not be suspended: start the idle parker: %v", err)
	}
}

func startParker(c *Controller) error {
	if held, err := lockHeld(parkerFile(c, layout.ParkerLock)); err != nil || held {
		return err
	}
	self := c.Self
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		self = exe
	}
	logf, err := os.OpenFile(parkerFile(c, layout.ParkerLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, ParkCommand, c.Fleet)
	cmd.Dir = c.Layout.FleetDir(c.Fleet)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = withoutCredentials(os.Environ())
	// Its own session: it outlives this command and its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	if c.Log != nil {
		c.Log.Debug("idle parker started", "pid", cmd.Process.Pid)
	}
	return cmd.Process.Release()
}

// withoutCredentials is env without the model credentials: the parker
// only reads states and suspends, and never needs one.
func withoutCredentials(env []string) []string {
	drop := map[string]bool{CredentialEnv: true}
	for _, k := range session.Credentials {
		drop[k] = true
	}
	out := env[:0:0]
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); !drop[k] {
			out = append(out, kv)
		}
	}
	return out
}

// lockHeld says whether another process holds an exclusive flock on path
// (false when path does not exist).
func lockHeld(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", path, err)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false, nil
}

// tryLock takes an exclusive flock on path if no one holds one; ok is
// false when someone does.
func tryLock(path string) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, err
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, false, nil
	}
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, true, nil
}

// awakeLockPath is m's awake lock.
func awakeLockPath(m *Machine) string { return filepath.Join(m.Dir, layout.AwakeLock) }

// awakeTimeout bounds the wait for a suspend the parker is doing on a
// machine a command wants: a suspend takes seconds.
const awakeTimeout = 2 * time.Minute

// holdAwake keeps the parker off m until release: commands that use a
// machine (exec, ssh, attach) hold it shared, the parker takes it
// exclusively while it suspends. A machine with no folder has nothing to
// keep awake.
func holdAwake(ctx context.Context, m *Machine) (release func(), err error) {
	if _, err := os.Stat(m.Dir); errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	wctx, cancel := context.WithTimeout(ctx, awakeTimeout)
	defer cancel()
	return filelock.Shared(wctx, awakeLockPath(m), m.Name+"'s awake lock", nil)
}
