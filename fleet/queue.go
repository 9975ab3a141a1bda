package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// Machines of a batch scheduler's driver (vm.Scheduled) may wait in its
// queue. Slurm decides when they run; fleet shows its decision and never
// holds the fleet's lock while it waits: spawn keeps a queued machine
// (Machine.Queued) instead of failing, and the first start that finds its
// job running brings the project in.

// queueGrace is how long a spawn lets the scheduler start a machine
// before it counts the machine as queued: a free node starts a job in a
// second or two.
const queueGrace = 15 * time.Second

// awaitScheduled waits, without the lock, until every named machine that
// is queued runs, saying what the scheduler says while it waits. A job the
// scheduler ends meanwhile is an error naming why.
func awaitScheduled(ctx context.Context, c *Controller, names []string, all bool) error {
	if _, ok := c.Driver.(vm.Scheduled); !ok {
		return nil
	}
	said := map[string]string{}
	for {
		s, err := c.Store().Load()
		if err != nil {
			return err
		}
		ms, err := c.Select(s, names, all)
		if err != nil {
			return err
		}
		waiting := 0
		for _, m := range ms {
			p, _, err := vm.PlacementOf(ctx, c.Driver, c.spec(m, vm.Seed{}))
			if err != nil {
				return fmt.Errorf("%s: %w", m.Name, err)
			}
			switch {
			case p.Ended && m.Desired == WantRunning:
				return fmt.Errorf("%s: its job %s %s", m.Name, p.Job, p.Phrase)
			case p.Queued:
				waiting++
				if said[m.Name] != p.Reason {
					c.say("%s: queued (%s), job %s", m.Name, orNoReason(p.Reason), p.Job)
					said[m.Name] = p.Reason
				}
			}
		}
		if waiting == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// queuedStart is spawn's handling of one machine's start error: a job
// still in the queue keeps its machine, marked queued.
func queuedStart(m *Machine, err error) (queued bool, _ error) {
	if errors.Is(err, vm.ErrQueued) {
		m.Queued = true
		return true, nil
	}
	return false, err
}

// bringInQueued brings the project into a machine that was queued at
// spawn, from its workspace record (the same start commit as its
// siblings'), and starts the agent spawn --task asked for on it.
func bringInQueued(ctx context.Context, c *Controller, m *Machine) error {
	if w := m.Workspace; w != nil && m.Queued {
		p, err := c.Workspaces().fromRecord(ctx, w)
		if err != nil {
			return Named(m.Name, err)
		}
		if err := c.Workspaces().syncIn(ctx, m, p); err != nil {
			return err
		}
	}
	m.Queued = false
	// Kept until it starts: a start that fails here tries it again.
	if q := m.QueuedTask; q != nil {
		r := SessionRequest{Task: q.Task, Profile: q.Profile, Setup: q.Setup, Getenv: os.Getenv}
		if err := c.Sessions().StartSession(ctx, m, r); err != nil {
			return err
		}
		m.QueuedTask = nil
	}
	return nil
}

// startWhenScheduled starts `fleet start NAMES` in its own session, so
// that queued machines start when the scheduler runs them, after this
// command has ended; its output goes to the fleet folder's queue log.
func startWhenScheduled(c *Controller, names []string) (string, error) {
	self := c.Self
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		self = exe
	}
	logPath := filepath.Join(c.Layout.FleetDir(c.Fleet), layout.QueueLog)
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	cmd := exec.Command(self, append([]string{"start", "--name", c.Fleet}, names...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	return logPath, cmd.Process.Release()
}
