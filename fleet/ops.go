package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/workspace"

	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/sync/errgroup"
)

// MachineStatus is one row of `fleet ls`.
type MachineStatus struct {
	Name      string  `json:"name"`
	State     string  `json:"state"`
	Image     string  `json:"image"`
	Provider  string  `json:"provider"` // the hypervisor driver: qemu or virtualbox
	Arch      vm.Arch `json:"arch,omitempty"`
	Address   string  `json:"address,omitempty"`
	UptimeSec int64   `json:"uptime_seconds,omitempty"`
	CPUs      int     `json:"cpus"`
	MemoryMiB int     `json:"memory_mib"`
	PID       int     `json:"pid,omitempty"`
	// Agent is the machine's agent session (running machines only).
	Agent *session.Status `json:"agent,omitempty"`
	// Spend is what the credential proxy counted (machines with one).
	Spend *Spend `json:"spend,omitempty"`
	// SuspendReason says why a suspended machine is: the idle parker's
	// reason ("idle 15m: agent succeeded"); none for the user's suspend.
	SuspendReason string `json:"suspend_reason,omitempty"`
	// Memory is the host memory its hypervisor process holds (machines
	// whose process runs, on drivers that can say).
	Memory *vm.HostMemory `json:"memory,omitempty"`
	// ForkOf names the machine it was forked from.
	ForkOf string `json:"fork_of,omitempty"`
	// Placement is where a batch scheduler (Slurm) put it: job, node,
	// the job's state and reason.
	Placement *vm.Placement `json:"placement,omitempty"`
}

// Status reports every machine of the fleet and its agent.
func (c *Controller) Status(ctx context.Context) ([]MachineStatus, error) {
	out, s, err := c.machines(ctx)
	if err != nil {
		return nil, err
	}
	// Agents are asked in parallel, each briefly: a wedged VM costs ls
	// seconds, not minutes.
	var wg sync.WaitGroup
	for i, m := range s.Machines {
		if out[i].State != StateRunning || m.SSHAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if st, err := c.Sessions().SessionStatus(qctx, m); err == nil {
				out[i].Agent = &st
			}
		}()
	}
	wg.Wait()
	return out, nil
}

func (c *Controller) machines(ctx context.Context) ([]MachineStatus, *State, error) {
	s, err := c.Store().Load()
	if err != nil {
		return nil, nil, err
	}
	out := make([]MachineStatus, 0, len(s.Machines))
	for _, m := range s.Machines {
		ms := MachineStatus{Name: m.Name, Image: m.Image, Provider: c.Driver.Name(), Arch: m.Arch.Or(), CPUs: m.CPUs, MemoryMiB: m.MemoryMiB, ForkOf: m.ForkOf}
		if ms.Spend, err = c.Net().Spend(ctx, m); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		spec := c.spec(m, vm.Seed{})
		ds, err := c.Driver.Status(ctx, spec)
		if p, ok, perr := vm.PlacementOf(ctx, c.Driver, spec); ok && perr == nil && p.Job != "" {
			ms.Placement = &p
		}
		switch {
		case err != nil:
			return nil, nil, fmt.Errorf("%s: %w", m.Name, err)
		case ds.Power == vm.PowerOn && ds.Paused != "":
			ms.State, ms.Address, ms.PID = StatePaused+": "+ds.Paused, ds.Runtime.SSHAddr, ds.Runtime.PID
			ms.Memory, _ = c.Guests().HostMemory(m)
		case ds.Power == vm.PowerOn && m.Queued:
			ms.State, ms.Address = StateStarting, ds.Runtime.SSHAddr // queued at spawn: its start is bringing it up
		case ds.Power == vm.PowerOn:
			ms.Memory, _ = c.Guests().HostMemory(m)
			ms.State, ms.Address, ms.PID = StateRunning, ds.Runtime.SSHAddr, ds.Runtime.PID
			if !m.StartedAt.IsZero() {
				ms.UptimeSec = int64(time.Since(m.StartedAt).Seconds())
			}
		case ms.Placement != nil && ms.Placement.Queued:
			ms.State = StateQueued + " (" + orNoReason(ms.Placement.Reason) + ")"
		case ms.Placement != nil && ms.Placement.Ended && m.Desired == WantRunning:
			ms.State = StateLost + ": " + ms.Placement.Phrase
		case ms.Placement != nil && m.Queued:
			ms.State = StateStarting // its job runs; the background start brings it up
		case m.Desired == WantRunning:
			ms.State = StateDead
		case m.Desired == WantSuspended:
			ms.State, ms.SuspendReason = StateSuspended, m.SuspendReason
		default:
			ms.State = StateStopped
		}
		out = append(out, ms)
	}
	image, phases, making := machinesBeingMade(c.Layout, c.Fleet)
	for _, n := range making {
		if s.Find(n) == nil {
			out = append(out, MachineStatus{Name: n, State: phases[n], Image: image, Provider: c.Driver.Name()})
		}
	}
	return out, s, nil
}

// StartOptions change how machines start.
type StartOptions struct {
	// DiscardMemory boots a suspended machine from its disk, dropping its
	// saved state (for a state file that is lost or damaged).
	DiscardMemory bool
}

// Start boots stopped or dead machines, resumes suspended ones, continues
// paused ones, and waits for SSH.
func (c *Controller) Start(ctx context.Context, names []string, all bool, o StartOptions) error {
	if _, scheduled := c.Driver.(vm.Scheduled); scheduled && !all && len(names) > 1 {
		// Each as soon as its own job runs: one still queued, ended or
		// destroyed holds up none of the others.
		errs := make([]error, len(names))
		var wg sync.WaitGroup
		for i, n := range names {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = c.Start(ctx, []string{n}, false, o) }()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	// A queued machine is waited for first, without the lock.
	if err := awaitScheduled(ctx, c, names, all); err != nil {
		return err
	}
	var warn sync.Once // once the machines are known to exist
	return c.mutate(ctx, names, all, func(gctx context.Context, m *Machine) error {
		if c.BeforeBoot != nil {
			warn.Do(c.BeforeBoot)
		}
		return c.startOne(gctx, m, o)
	})
}

// startOne starts one machine; the caller holds the fleet lock.
func (c *Controller) startOne(ctx context.Context, m *Machine, o StartOptions) error {
	c.Guests().sshPool().Drop(m.Name)
	spec, err := c.Net().bootSpec(ctx, m, vm.Seed{})
	if err != nil {
		return err
	}
	if o.DiscardMemory {
		if err := vm.DiscardSuspended(c.Driver, spec); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
	}
	resuming := vm.Suspended(c.Driver, spec)
	if m.Desired == WantSuspended && !resuming && !o.DiscardMemory {
		return fmt.Errorf("%s was suspended, but its saved state (%s) is missing; to boot it from its disk instead, losing what was in its memory: fleet start --discard-memory %s", m.Name, filepath.Join(m.Dir, layout.SuspendFile), m.Name)
	}
	t0 := time.Now()
	rt, err := c.Net().startMachine(ctx, spec)
	if err != nil {
		if resuming {
			return fmt.Errorf("%w; the disk and the state are kept (to boot from the disk instead, losing what was in memory: fleet start --discard-memory %s)", err, m.Name)
		}
		return err
	}
	m.SSHAddr, m.PID, m.Desired, m.SuspendReason = rt.SSHAddr, rt.PID, WantRunning, ""
	if !resuming {
		m.Prebuild = hostPrebuilt(m, rt, m.Prebuild)
	}
	if rt.Note != "" {
		c.say("%s: %s", m.Name, rt.Note)
	}
	if m.IdleSuspendSec > 0 {
		ensureParker(c)
	}
	if !resuming {
		m.StartedAt = time.Now().UTC()
	}
	if m.Workspace != nil {
		m.Workspace.PendingAtStop = nil // running again: ask the VM itself
	}
	if resuming {
		c.say("%s: resumed in %s (ssh on %s)", m.Name, time.Since(t0).Round(10*time.Millisecond), rt.SSHAddr)
	} else {
		c.say("%s: booting (ssh on %s)", m.Name, rt.SSHAddr)
	}
	if err := c.Guests().waitSSH(ctx, m); err != nil {
		return err
	}
	if resuming {
		// The guest's clock stood still while it was saved.
		if err := c.setClock(ctx, m); err != nil {
			return err // it names the machine and the step
		}
	}
	if err := bringInQueued(ctx, c, m); err != nil {
		return err
	}
	if m.Workspace != nil && m.Workspace.Mode == SyncShared && !resuming {
		if err := c.Workspaces().mountShared(ctx, m); err != nil {
			return Named(m.Name, err)
		}
	}
	c.say("%s: ready", m.Name)
	return nil
}

// setClock sets the guest's clock to the host's.
//
// The time sent ages while the guest starts the command (seconds for a
// session and sudo on a loaded host): the guest says what its clock reads
// once set, and a lag of seconds is then added to its own clock, which a
// second slow start cannot age.
func (c *Controller) setClock(ctx context.Context, m *Machine) error {
	now := time.Now()
	out, err := c.Guests().guestRun(ctx, m, "set the clock after resume", fmt.Sprintf("sudo -n date -u -s @%d.%09d >/dev/null && date +%%s.%%N", now.Unix(), now.Nanosecond()), nil)
	if err != nil {
		return err
	}
	lag := clockLag(string(out), time.Now())
	if lag < 2 {
		return nil
	}
	_, err = c.Guests().guestRun(ctx, m, "set the clock after resume", fmt.Sprintf("sudo -n sh -c 'date -u -s @$(( $(date +%%s) + %d )) >/dev/null'", lag), nil)
	return err
}

// clockLag is how many whole seconds a guest clock that read guest (date
// +%s.%N) lags the host's at now; 0 if it is not a time, or not behind.
func clockLag(guest string, now time.Time) int64 {
	f, err := strconv.ParseFloat(strings.TrimSpace(guest), 64)
	if err != nil || f <= 0 {
		return 0
	}
	lag := now.Sub(time.Unix(0, int64(f*1e9))).Seconds()
	if lag < 0 || lag > 24*3600 {
		return 0 // ahead, or not a clock this command set
	}
	return int64(lag)
}

// Suspend saves running machines' memory to their folders and ends their
// hypervisor processes, freeing the host's RAM; start resumes them where
// they were, agents and all.
func (c *Controller) Suspend(ctx context.Context, names []string, all bool) error {
	if !c.Driver.Capabilities().Snapshots {
		if _, scheduled := c.Driver.(vm.Scheduled); scheduled {
			return fmt.Errorf("the %s driver cannot suspend machines: a machine's memory and disk live on its node inside its job and go with it; collect its work, then destroy it", c.Driver.Name())
		}
		return fmt.Errorf("the %s driver cannot suspend machines: use fleet stop", c.Driver.Name())
	}
	return c.mutate(ctx, names, all, func(gctx context.Context, m *Machine) error {
		if m.Desired == WantSuspended {
			c.say("%s: already suspended", m.Name)
			return nil
		}
		return c.suspendOne(gctx, m)
	})
}

// suspendOne suspends one running machine; the caller holds the lock.
func (c *Controller) suspendOne(ctx context.Context, m *Machine) error {
	if m.Workspace != nil && m.Workspace.Mode == SyncShared {
		return fmt.Errorf("%s has a live shared folder (virtiofs), which cannot be saved with it: use fleet stop", m.Name)
	}
	if _, err := c.Guests().Connect(ctx, m); err != nil {
		return err
	}
	c.rememberPending(ctx, m)
	c.Guests().sshPool().Drop(m.Name)
	t0 := time.Now()
	spec := c.spec(m, vm.Seed{})
	if err := vm.Suspend(ctx, c.Driver, spec); err != nil {
		return err
	}
	egress.StopServer(m.Dir)
	m.SSHAddr, m.PID, m.Desired = "", 0, WantSuspended
	size := ""
	if fi, err := os.Stat(filepath.Join(m.Dir, layout.SuspendFile)); err == nil {
		size = fmt.Sprintf(", %d MiB saved", fi.Size()>>20)
	}
	c.say("%s: suspended in %s%s", m.Name, time.Since(t0).Round(10*time.Millisecond), size)
	return nil
}

// whileRunning runs fn on m, resuming it first if it is suspended and
// suspending it again after: collect and diff work on suspended machines.
// The caller holds the lock.
func (c *Controller) whileRunning(ctx context.Context, m *Machine, fn func() error) error {
	if m.Desired != WantSuspended {
		return fn()
	}
	c.say("%s: resuming it for this", m.Name)
	reason := m.SuspendReason // parked idle, it stays parked idle
	if err := c.startOne(ctx, m, StartOptions{}); err != nil {
		return err
	}
	err := fn()
	if serr := c.suspendOne(ctx, m); serr != nil {
		return errors.Join(err, fmt.Errorf("%s: suspend it again: %w", m.Name, serr))
	}
	m.SuspendReason = reason
	return err
}

// rememberPending records whether m has uncollected work, so destroy can
// protect it while m is stopped or suspended (and cannot be asked).
func (c *Controller) rememberPending(ctx context.Context, m *Machine) {
	if m.Workspace == nil {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if pending, _, err := c.Workspaces().Pending(qctx, m); err == nil {
		m.Workspace.PendingAtStop = &pending
	}
}

// Stop powers machines off gracefully (then forcibly after StopGrace).
func (c *Controller) Stop(ctx context.Context, names []string, all bool) error {
	return c.mutate(ctx, names, all, func(gctx context.Context, m *Machine) error {
		if m.SSHAddr != "" {
			c.rememberPending(gctx, m)
		}
		c.Guests().sshPool().Drop(m.Name)
		if err := c.Net().stopMachine(gctx, c.spec(m, vm.Seed{})); err != nil {
			return err
		}
		m.SSHAddr, m.PID, m.Desired, m.SuspendReason = "", 0, WantStopped, ""
		c.say("%s: stopped", m.Name)
		return nil
	})
}

// mutate runs fn on the selected machines in parallel under the fleet lock
// and saves whatever each fn changed, even if another failed.
func (c *Controller) mutate(ctx context.Context, names []string, all bool, fn func(context.Context, *Machine) error) error {
	unlock, s, ms, err := c.lockSelected(ctx, names, all)
	if err != nil {
		return err
	}
	defer unlock()
	var g errgroup.Group
	if c.Parallel > 0 {
		g.SetLimit(c.Parallel)
	}
	errs := make([]error, len(ms))
	for i, m := range ms {
		g.Go(func() error { errs[i] = fn(ctx, m); return nil })
	}
	_ = g.Wait()
	if err := c.Store().Save(s); err != nil {
		return err
	}
	if err := c.writeKnownHosts(s); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Destroy removes machines completely: process, disk, seed, forward and
// state. Unknown names are an error; destroying an already-gone machine
// is not. With all, leftovers of interrupted spawns are swept too, and an
// empty fleet's folder (key, known_hosts, state) is removed.
func (c *Controller) Destroy(ctx context.Context, names []string, all bool, o DestroyOptions) error {
	st := c.Store()
	unlock, err := c.lock(ctx)
	if err != nil {
		return err
	}
	s, err := st.Load()
	if err != nil {
		unlock()
		return err
	}
	var ms []*Machine
	if all {
		ms = append(ms, s.Machines...)
	} else if ms, err = c.Select(s, names, false); err != nil {
		unlock()
		return err
	}
	if err := c.guardWork(ctx, ms, o); err != nil {
		unlock()
		return err
	}
	// Teardown must finish even if the user presses Ctrl-C again.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		m := ms[i]
		c.Guests().sshPool().Drop(m.Name)
		if err := c.Net().deleteMachine(cctx, c.spec(m, vm.Seed{})); err != nil {
			errs = append(errs, err)
			continue
		}
		s.Remove(m.Name)
		c.say("%s: destroyed", m.Name)
	}
	if all {
		errs = append(errs, c.sweepOrphans(cctx, s))
	}
	empty := len(s.Machines) == 0
	if err := st.Save(s); err != nil {
		errs = append(errs, err)
	} else if err := c.writeKnownHosts(s); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, pruneForkCaptures(c.Layout, c.Fleet, s))
	}
	unlock()
	if empty && errors.Join(errs...) == nil {
		if err := removeFleetDir(c.Layout, c.Fleet); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeFleetDir removes an empty fleet's folder (state, key, known_hosts)
// but keeps collected results: they are the user's, not the fleet's.
func removeFleetDir(l Layout, fleet string) error {
	entries, err := os.ReadDir(l.FleetDir(fleet))
	if err != nil {
		return nil
	}
	results := l.ResultsDir(fleet)
	kept := false
	for _, e := range entries {
		p := filepath.Join(l.FleetDir(fleet), e.Name())
		if p == results {
			kept = true
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if !kept {
		return os.Remove(l.FleetDir(fleet))
	}
	return nil
}

// sweepOrphans deletes machine folders that no state record owns: what a
// spawn killed with SIGKILL (no chance to roll back) leaves behind.
func (c *Controller) sweepOrphans(ctx context.Context, s *State) error {
	entries, err := os.ReadDir(c.Layout.MachinesDir(c.Fleet))
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || s.Find(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(c.Layout.MachinesDir(c.Fleet), e.Name())
		if err := c.Net().deleteMachine(ctx, vm.Spec{Name: e.Name(), Dir: dir}); err != nil {
			errs = append(errs, err)
			continue
		}
		c.say("%s: removed leftover machine", e.Name())
	}
	return errors.Join(errs...)
}

// DestroyOptions say what happens to work not yet collected.
type DestroyOptions struct {
	Force          bool // destroy anyway, losing it
	Collect        bool // collect it first
	CollectOptions CollectOptions
}

// guardWork refuses, before anything is destroyed, machines whose work
// no collect has brought to the host, naming each; with Collect it
// collects them first.
func (c *Controller) guardWork(ctx context.Context, ms []*Machine, o DestroyOptions) error {
	if o.Force {
		return nil
	}
	var refused []string
	for _, m := range ms {
		w := m.Workspace
		if w == nil || (w.Mode != SyncGit && w.Mode != SyncRsync) || m.Queued {
			continue // a queued machine never ran: no work
		}
		if o.Collect {
			if _, err := c.Workspaces().collectOne(ctx, m, o.CollectOptions); err != nil {
				return fmt.Errorf("%s: collect before destroy: %w (nothing was destroyed)", m.Name, err)
			}
			continue
		}
		pending, what := false, ""
		switch {
		case m.SSHAddr != "":
			var err error
			if pending, what, err = c.Workspaces().Pending(ctx, m); err != nil {
				pending, what = true, "cannot be checked ("+termsafe.Line(err.Error())+")"
			}
		case w.PendingAtStop != nil:
			pending, what = *w.PendingAtStop, "work found when it was stopped or suspended"
		default:
			pending, what = true, "cannot be checked while it is not running"
		}
		if pending {
			refused = append(refused, fmt.Sprintf("%s (%s)", m.Name, what))
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("not destroying: uncollected work in %s; run fleet collect first, or destroy --collect, or --force to discard it", strings.Join(refused, ", "))
	}
	return nil
}

// Collect brings each machine's work to the host: in git mode as branch
// fleet/<vm> (the VM's uncommitted work as its own commit on top), in
// rsync mode into a results folder. The host's working tree, index,
// HEAD, hooks and config are never written.
func (c *Controller) Collect(ctx context.Context, names []string, all bool, o CollectOptions) ([]workspace.Summary, error) {
	unlock, s, ms, err := c.lockSelected(ctx, names, all)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := checkCollectable(ms, all); err != nil {
		return nil, err
	}
	var out []workspace.Summary
	var errs []error
	for _, m := range ms {
		if m.Workspace == nil || (m.Workspace.Mode != SyncGit && m.Workspace.Mode != SyncRsync) {
			continue
		}
		var sum workspace.Summary
		err := c.whileRunning(ctx, m, func() (err error) {
			sum, err = c.Workspaces().collectOne(ctx, m, o)
			return err
		})
		if err != nil {
			errs = append(errs, Named(m.Name, err))
			continue
		}
		out = append(out, sum)
	}
	if err := c.Store().Save(s); err != nil {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}
