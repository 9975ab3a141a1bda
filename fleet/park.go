package fleet

// Parking idle agents: the parker that suspends a machine whose agent has
// waited for input or been done for its idle_suspend, and the wake-up
// that commands using a parked machine go through. The decision itself
// is idle.go's; the process and its locks are parkproc.go's.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/sync/errgroup"
)

// Parking is the idle-parking concern of a controller. It is reached
// with ParkingOf, not a method: Controller is at the architecture
// test's limit of methods.
type Parking struct{ c *Controller }

// ParkingOf is c's idle-parking concern.
func ParkingOf(c *Controller) Parking { return Parking{c} }

// KeepAwake resumes those of ms the idle parker suspended, saying so,
// and keeps the parker off every one of them until release: exec, ssh,
// attach, run, logs and the cockpit's keys call it before they use a
// machine. The records in ms are brought up to date in place. A machine
// the user suspended or stopped is left as it is (Connect then says so).
func (p Parking) KeepAwake(ctx context.Context, ms []*Machine) (release func(), err error) {
	c := p.c
	var held []func()
	release = func() {
		for _, r := range held {
			r()
		}
	}
	// Held before the state is read: a suspend the parker is doing is
	// waited for, and seen.
	for _, m := range ms {
		r, err := holdAwake(ctx, m)
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, r)
	}
	s, err := c.Store().Load()
	if err != nil {
		release()
		return nil, err
	}
	parked := false
	for _, m := range ms {
		if fresh := s.Find(m.Name); fresh != nil {
			*m = *fresh
			parked = parked || fresh.Parked()
		}
	}
	if !parked {
		return release, nil // the common case: no fleet lock taken
	}
	if err := p.wake(ctx, ms); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// wake resumes the parked machines of ms under the fleet lock.
func (p Parking) wake(ctx context.Context, ms []*Machine) error {
	c := p.c
	unlock, err := c.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := c.Store().Load()
	if err != nil {
		return err
	}
	var g errgroup.Group
	if c.Parallel > 0 {
		g.SetLimit(c.Parallel)
	}
	errs := make([]error, len(ms))
	for i, m := range ms {
		fresh := s.Find(m.Name)
		if fresh == nil || !fresh.Parked() {
			continue
		}
		g.Go(func() error {
			c.say("%s: resuming (parked %s)", fresh.Name, fresh.SuspendReason)
			errs[i] = c.startOne(ctx, fresh, StartOptions{})
			return nil
		})
	}
	_ = g.Wait()
	if err := c.Store().Save(s); err != nil {
		return err
	}
	if err := c.writeKnownHosts(s); err != nil {
		return err
	}
	for _, m := range ms {
		if fresh := s.Find(m.Name); fresh != nil {
			*m = *fresh
		}
	}
	return errors.Join(errs...)
}

// SetIdleSuspend sets how long the selected machines' agents may be idle
// before they are parked (0: never), and starts the parker if a running
// one now needs it: fleet up on an existing machine, fleet run
// --idle-suspend.
func (p Parking) SetIdleSuspend(ctx context.Context, names []string, all bool, d time.Duration) error {
	c := p.c
	return c.mutate(ctx, names, all, func(_ context.Context, m *Machine) error {
		if d > 0 {
			if why := cannotPark(c, m); why != "" {
				return fmt.Errorf("%s cannot be suspended when idle: %s", m.Name, why)
			}
		}
		m.IdleSuspendSec = int(d / time.Second)
		if d > 0 && m.Desired == WantRunning {
			ensureParker(c)
		}
		return nil
	})
}

// cannotPark says why m could never be suspended ("" if it can).
func cannotPark(c *Controller, m *Machine) string {
	if !c.Driver.Capabilities().Snapshots {
		return "the " + c.Driver.Name() + " driver cannot suspend machines"
	}
	if m.Workspace != nil && m.Workspace.Mode == SyncShared {
		return "a live shared folder (virtiofs) cannot be saved with it"
	}
	return ""
}

// ParkPoll is how often the parker looks at the agents by default.
const ParkPoll = 20 * time.Second

// ParkOptions tune the parker.
type ParkOptions struct {
	// Every is the time between two looks at the agents (ParkPoll if 0).
	Every time.Duration
}

// Run is the fleet's idle parker (fleet __park FLEET): every o.Every it
// reads each running machine's agent the way fleet ls does, one guest
// call each, and suspends a machine whose agent has waited for input or
// been done for the machine's idle_suspend, recording why. It returns
// when ctx ends or no running machine of the fleet has idle_suspend, and
// at once if another parker of the fleet runs. What it does, and what
// it could not do, goes to the fleet's parker log; a machine it cannot
// read is never parked.
func (p Parking) Run(ctx context.Context, o ParkOptions) error {
	c := p.c
	lockPath := parkerFile(c, layout.ParkerLock)
	unlock, ok, err := tryLock(lockPath)
	if err != nil || !ok {
		return err
	}
	ours, _ := os.Stat(lockPath)
	var letGoOnce sync.Once
	letGo := func() { letGoOnce.Do(unlock) }
	defer letGo()

	log := &rotatingLog{path: parkerFile(c, layout.ParkerLog), max: 1 << 20}
	defer log.Close()
	c.Progress = log
	pidFile := parkerFile(c, layout.ParkerPIDFile)
	pid := strconv.Itoa(os.Getpid())
	_ = WriteFileAtomic(pidFile, []byte(pid+"\n"), 0o600)
	defer func() {
		if b, err := os.ReadFile(pidFile); err == nil && strings.TrimSpace(string(b)) == pid {
			os.Remove(pidFile)
		}
	}()
	c.say("idle parker %s: watching fleet %s", pid, c.Fleet)

	every := o.Every
	if every <= 0 {
		every = ParkPoll
	}
	l := &parkLoop{
		every: every,
		now:   time.Now,
		load: func(ctx context.Context, locked bool) (*State, func(), error) {
			if !locked {
				s, err := c.Store().Load()
				return s, func() {}, err
			}
			unlock, err := c.Store().Lock(ctx, nil)
			if err != nil {
				return nil, nil, err
			}
			s, err := c.Store().Load()
			if err != nil {
				unlock()
				return nil, nil, err
			}
			return s, unlock, nil
		},
		running: func(ctx context.Context, m *Machine) bool {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			st, err := c.Driver.Status(sctx, c.spec(m, vm.Seed{}))
			return err == nil && st.Power == vm.PowerOn && st.Paused == "" && m.SSHAddr != ""
		},
		status: func(ctx context.Context, m *Machine) (session.Status, error) {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			st, err := c.Sessions().SessionStatus(qctx, m)
			if err != nil {
				c.Guests().sshPool().Drop(m.Name) // reconnect next round
			}
			return st, err
		},
		park: p.park,
		ours: func() bool {
			fi, err := os.Stat(lockPath)
			return err == nil && ours != nil && os.SameFile(fi, ours)
		},
		say: c.say,
	}
	return l.run(ctx, letGo)
}

// park suspends the named machine for reason, if it is still the one
// the parker watched (same process, still meant to run, still with
// idle_suspend) and no command holds it awake. parked is false when it
// was left alone.
func (p Parking) park(ctx context.Context, name string, pid int, reason string) (parked bool, err error) {
	c := p.c
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	unlock, err := c.Store().Lock(lctx, nil)
	cancel()
	if err != nil {
		return false, fmt.Errorf("%s: the fleet is busy, trying again later: %w", name, err)
	}
	defer unlock()
	s, err := c.Store().Load()
	if err != nil {
		return false, err
	}
	m := s.Find(name)
	if m == nil || m.Desired != WantRunning || m.PID != pid || m.IdleSuspendSec <= 0 {
		return false, nil // the user moved it meanwhile: theirs
	}
	if why := cannotPark(c, m); why != "" {
		return false, fmt.Errorf("%s: %s", name, why)
	}
	release, free, err := tryLock(awakeLockPath(m))
	if err != nil || !free {
		return false, err // a command is using it
	}
	defer release()
	// A suspend cut in half would leave a QEMU the state does not know.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer scancel()
	serr := c.suspendOne(sctx, m)
	if serr == nil {
		m.SuspendReason = reason
	}
	// Saved either way, as mutate does: a failed suspend may have changed
	// the record too.
	if err := c.Store().Save(s); err != nil {
		return false, errors.Join(serr, err)
	}
	if err := c.writeKnownHosts(s); err != nil {
		return serr == nil, errors.Join(serr, err)
	}
	return serr == nil, serr
}

// parkLoop is the parker's loop over what it needs of the world, so a
// test can run it without a VM.
type parkLoop struct {
	every time.Duration
	now   func() time.Time
	// load reads the fleet's state; locked, under the fleet lock, until
	// the returned unlock.
	load func(ctx context.Context, locked bool) (*State, func(), error)
	// running says the hypervisor of m runs its guest.
	running func(ctx context.Context, m *Machine) bool
	status  func(ctx context.Context, m *Machine) (session.Status, error)
	park    func(ctx context.Context, name string, pid int, reason string) (bool, error)
	// ours says the parker's lock file is still the fleet's (destroy
	// --all removes the folder; a spawn after it starts another parker).
	ours func() bool
	say  func(format string, args ...any)
}

// maxLoadErrors is how many rounds in a row the state may be unreadable
// before the parker gives up (a later command starts it again).
const maxLoadErrors = 15

// watched is what the parker remembers of one machine.
type watched struct {
	idleWatch
	pid     int
	lastErr string
}

func (l *parkLoop) run(ctx context.Context, letGo func()) error {
	machines := map[string]*watched{}
	locked := true // the first read waits for the command that started it
	loadErrors := 0
	for {
		s, unlock, err := l.load(ctx, locked)
		locked = false
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if loadErrors++; loadErrors >= maxLoadErrors {
				return fmt.Errorf("giving up: the state cannot be read: %w", err)
			}
			l.say("read the state: %v", err)
		} else {
			loadErrors = 0
			ms := parkable(s)
			unlock()
			// Checked first, and said nowhere: the lock or the log would
			// make a removed fleet folder again.
			if !l.ours() {
				return nil
			}
			if len(ms) == 0 && l.done(ctx, letGo) {
				l.say("no running machine has idle_suspend: exiting")
				return nil
			}
			l.poll(ctx, ms, machines)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.every):
		}
	}
}

// done decides, under the fleet lock, that nothing is left to watch, and
// then lets go of the parker lock before the fleet lock: a command that
// starts a machine meanwhile either finds this parker's lock held (and
// this read sees what it saved) or starts another parker.
func (l *parkLoop) done(ctx context.Context, letGo func()) bool {
	s, unlock, err := l.load(ctx, true)
	if err != nil {
		return false
	}
	defer unlock()
	if len(parkable(s)) > 0 {
		return false
	}
	letGo()
	return true
}

// parkable are the machines the parker watches: meant to run, with
// idle_suspend.
func parkable(s *State) []*Machine {
	var out []*Machine
	for _, m := range s.Machines {
		if m.Desired == WantRunning && m.IdleSuspendSec > 0 {
			out = append(out, m)
		}
	}
	return out
}

// poll looks at each machine once, in parallel, and parks those whose
// agents have been idle long enough, one at a time.
func (l *parkLoop) poll(ctx context.Context, ms []*Machine, machines map[string]*watched) {
	type seen struct {
		m     *Machine
		st    session.Status
		err   error
		at    time.Time
		alive bool
	}
	out := make([]seen, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = seen{m: m}
			if !l.running(ctx, m) {
				return
			}
			out[i].alive = true
			out[i].st, out[i].err = l.status(ctx, m)
			out[i].at = l.now()
		}()
	}
	wg.Wait()
	keep := map[string]bool{}
	for _, o := range out {
		m := o.m
		if !o.alive || ctx.Err() != nil {
			continue // not running: a new streak when it runs again
		}
		keep[m.Name] = true
		w := machines[m.Name]
		if w == nil || w.pid != m.PID {
			w = &watched{pid: m.PID}
			machines[m.Name] = w
		}
		w.after = m.IdleSuspend()
		if o.err != nil {
			if e := o.err.Error(); e != w.lastErr {
				l.say("%s: read its agent: %v", m.Name, o.err)
				w.lastErr = e
			}
		} else {
			w.lastErr = ""
		}
		if !w.observe(o.at, o.st, o.err) {
			continue
		}
		reason := ParkReason(w.after, o.st.State)
		parked, err := l.park(ctx, m.Name, m.PID, reason)
		switch {
		case err != nil:
			l.say("%s: park: %v", m.Name, err)
		case parked:
			l.say("%s: parked (%s)", m.Name, reason)
			delete(keep, m.Name)
		}
	}
	for name := range machines {
		if !keep[name] {
			delete(machines, name)
		}
	}
}

// rotatingLog is the parker's log: lines stamped with the time, the file
// moved to .1 past max bytes, so a parker that runs for weeks stays
// bounded.
type rotatingLog struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

func (r *rotatingLog) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	line := time.Now().UTC().Format(time.RFC3339) + " " + string(p)
	if r.f == nil && !r.open() {
		return len(p), nil // a log that cannot be written is no reason to stop
	}
	if r.size > 0 && r.size+int64(len(line)) > r.max {
		r.f.Close()
		r.f = nil
		_ = os.Rename(r.path, r.path+".1")
		if !r.open() {
			return len(p), nil
		}
	}
	n, _ := io.WriteString(r.f, line)
	r.size += int64(n)
	return len(p), nil
}

func (r *rotatingLog) open() bool {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return false
	}
	r.f, r.size = f, 0
	if fi, err := f.Stat(); err == nil {
		r.size = fi.Size()
	}
	return true
}

func (r *rotatingLog) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}
