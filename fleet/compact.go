package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// Compacting, the other way to park a waiting machine: a running machine moves into a fresh hypervisor process
// (vm.Compactor), which gives back what the old one had built up for
// itself; the guest goes on where it was after a pause of about a second.
// It is for machines that wait (an agent done, or waiting for review):
// they keep their memory and their place, at a fraction of the host
// memory, and answer at once, where a suspended one must be resumed.

// Compacted is one machine's compaction, as fleet compact shows it.
type Compacted struct {
	Name string `json:"name"`
	// Skipped says why the machine was left as it was (running an SSH
	// session, in use, suspended); the rest is then empty.
	Skipped  string `json:"skipped,omitempty"`
	PID      int    `json:"pid,omitempty"` // its new process
	PausedMS int64  `json:"paused_ms,omitempty"`
	// Unique host memory of its own before and just after.
	UniqueBefore uint64 `json:"unique_before_bytes,omitempty"`
	UniqueAfter  uint64 `json:"unique_after_bytes,omitempty"`
	// KeptBytes is the guest RAM carried over as its own (the pages it
	// wrote since its template).
	KeptBytes int64 `json:"kept_bytes,omitempty"`
}

// Compact moves the selected running machines into fresh processes, one
// at a time: each move reads the guest's whole RAM while the machine
// stands still, and two at once on a small host make each stand still
// several times as long. A machine that cannot be moved now (an open
// connection, a command using it, suspended) is skipped with the reason,
// not failed.
func (p Parking) Compact(ctx context.Context, names []string, all bool) ([]Compacted, error) {
	c := p.c
	if _, ok := c.Driver.(vm.Compactor); !ok {
		_, err := vm.Compact(ctx, c.Driver, vm.Spec{})
		return nil, err
	}
	unlock, s, ms, err := c.lockSelected(ctx, names, all)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var out []Compacted
	var errs []error
	for _, m := range ms {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("%s: not compacted: %w", m.Name, ctx.Err()))
			continue
		}
		r, err := p.compactOne(ctx, m)
		if r.Skipped != "" {
			c.say("%s: left as it is: %s", m.Name, r.Skipped)
		}
		out = append(out, r)
		errs = append(errs, err)
	}
	// Saved whatever happened: a machine moved has a new process.
	if err := c.Store().Save(s); err != nil {
		return out, err
	}
	return out, errors.Join(errs...)
}

// compactOne compacts m; the caller holds the fleet lock.
func (p Parking) compactOne(ctx context.Context, m *Machine) (Compacted, error) {
	c := p.c
	r := Compacted{Name: m.Name}
	switch {
	case m.Desired == WantSuspended:
		r.Skipped = "suspended: it holds no host memory"
		return r, nil
	case m.Desired != WantRunning || m.PID == 0:
		r.Skipped = "not running"
		return r, nil
	case m.Workspace != nil && m.Workspace.Mode == SyncShared:
		return r, fmt.Errorf("%s has a live shared folder (virtiofs), which cannot move to another process", m.Name)
	}
	release, free, err := tryLock(awakeLockPath(m))
	if err != nil {
		return r, err
	}
	if !free {
		r.Skipped = "in use (a fleet exec, ssh, attach or collect holds it awake)"
		return r, nil
	}
	defer release()
	if hm, err := c.Guests().HostMemory(m); err == nil {
		r.UniqueBefore = hm.Unique
	}
	// This process's own kept connection would be one the move cuts.
	c.Guests().sshPool().Drop(m.Name)
	// A move cut in half would leave two processes the state does not
	// know: it runs to its end once begun.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	t0 := time.Now()
	cm, err := vm.Compact(mctx, c.Driver, c.spec(m, vm.Seed{}))
	if cm.PID != 0 {
		m.PID = cm.PID
	}
	if errors.Is(err, vm.ErrBusy) {
		r.Skipped = err.Error()
		return r, nil
	}
	if err != nil {
		return r, err
	}
	r.PID, r.PausedMS, r.KeptBytes = cm.PID, cm.Paused.Milliseconds(), cm.KeptBytes
	if hm, err := c.Guests().HostMemory(m); err == nil {
		r.UniqueAfter = hm.Unique
	}
	c.say("%s: compacted in %s (stood still %s): %s of host memory of its own, was %s", m.Name,
		time.Since(t0).Round(10*time.Millisecond), cm.Paused.Round(10*time.Millisecond), mib(r.UniqueAfter), mib(r.UniqueBefore))
	return r, nil
}

// mib is a byte count in MiB, as fleet's messages give memory.
func mib(b uint64) string { return fmt.Sprintf("%d MiB", b>>20) }
