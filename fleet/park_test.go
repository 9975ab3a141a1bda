package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/session"
)

// fakeFleet is the world a parkLoop sees: a state, hypervisors that run
// or not, agents that answer or not.
type fakeFleet struct {
	mu      sync.Mutex
	s       State
	round   int
	running map[string]bool
	status  func(name string, round int) (session.Status, error)
	parked  map[string]string // name -> reason
	locked  []int             // rounds whose read took the fleet lock
	onRound func(round int)
}

func (f *fakeFleet) loop(t0 time.Time) *parkLoop {
	return &parkLoop{
		every: time.Millisecond,
		now: func() time.Time {
			f.mu.Lock()
			defer f.mu.Unlock()
			return t0.Add(time.Duration(f.round) * 30 * time.Second)
		},
		load: func(ctx context.Context, locked bool) (*State, func(), error) {
			f.mu.Lock()
			if locked {
				f.locked = append(f.locked, f.round)
			} else {
				f.round++
			}
			cp := State{Fleet: f.s.Fleet}
			for _, m := range f.s.Machines {
				mm := *m
				cp.Machines = append(cp.Machines, &mm)
			}
			r, on := f.round, f.onRound
			f.mu.Unlock()
			if on != nil && !locked {
				on(r)
			}
			return &cp, func() {}, nil
		},
		running: func(_ context.Context, m *Machine) bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.running[m.Name]
		},
		status: func(_ context.Context, m *Machine) (session.Status, error) {
			f.mu.Lock()
			r := f.round
			f.mu.Unlock()
			return f.status(m.Name, r)
		},
		park: func(_ context.Context, name string, pid int, reason string) (bool, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			m := f.s.Find(name)
			if m == nil || m.Desired != WantRunning || m.PID != pid {
				return false, nil
			}
			m.Desired, m.SuspendReason = WantSuspended, reason
			f.parked[name] = reason
			return true, nil
		},
		ours: func() bool { return true },
		say:  func(string, ...any) {},
	}
}

func TestParkLoopParksOnlyIdleAgents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := func(name string, pid int) *Machine {
		return &Machine{Name: name, Desired: WantRunning, PID: pid, IdleSuspendSec: 60}
	}
	f := &fakeFleet{
		s: State{Fleet: "p", Machines: []*Machine{m("p-1", 1), m("p-2", 2), m("p-3", 3), m("p-4", 4), m("p-5", 5),
			{Name: "p-6", Desired: WantRunning, PID: 6}}},
		running: map[string]bool{"p-1": true, "p-2": true, "p-3": true, "p-5": true, "p-6": true},
		parked:  map[string]string{},
		status: func(name string, round int) (session.Status, error) {
			switch name {
			case "p-1":
				return session.Status{State: session.Succeeded}, nil
			case "p-2":
				return session.Status{State: session.Working}, nil
			case "p-3":
				return session.Status{}, errors.New("ssh: connect: connection refused")
			case "p-5": // the user suspends it before the parker would
				return session.Status{State: session.Waiting}, nil
			}
			return session.Status{State: session.Failed}, nil
		},
	}
	var parkedAt int
	f.onRound = func(r int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.parked["p-1"] != "" && parkedAt == 0 {
			parkedAt = r - 1
		}
		if r == 2 {
			f.s.Find("p-5").Desired = WantSuspended
		}
		if r == 3 {
			f.s.Find("p-1").PID = 1 // nothing changes: same run
		}
		if r >= 12 {
			cancel()
		}
	}
	done := make(chan error)
	go func() { done <- f.loop(time.Unix(1e9, 0)).run(ctx, func() {}) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := f.parked["p-1"]; got != "idle 1m: agent succeeded" {
		t.Errorf("p-1 (succeeded): parked %q", got)
	}
	if parkedAt != 2 {
		t.Errorf("p-1 parked in round %d, want 2 (seen at 0s, 30s, 60s)", parkedAt)
	}
	for _, n := range []string{"p-2", "p-3", "p-4", "p-5", "p-6"} {
		if r, ok := f.parked[n]; ok {
			t.Errorf("%s parked (%s): working, unreadable, not running, suspended by the user, no idle_suspend", n, r)
		}
	}
	if len(f.locked) == 0 || f.locked[0] != 0 {
		t.Errorf("the first read must take the fleet lock: locked reads %v", f.locked)
	}
}

// A machine run again (another hypervisor process) starts a new streak.
func TestParkLoopNewRunNewStreak(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &fakeFleet{
		s:       State{Machines: []*Machine{{Name: "p-1", Desired: WantRunning, PID: 100, IdleSuspendSec: 60}}},
		running: map[string]bool{"p-1": true},
		parked:  map[string]string{},
		status: func(string, int) (session.Status, error) {
			return session.Status{State: session.Succeeded}, nil
		},
	}
	f.onRound = func(r int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.s.Find("p-1").PID = 100 + r // restarted before every look
		if r >= 8 {
			cancel()
		}
	}
	if err := f.loop(time.Unix(1e9, 0)).run(ctx, func() {}); err != nil {
		t.Fatal(err)
	}
	if len(f.parked) != 0 {
		t.Errorf("parked across restarts: %v", f.parked)
	}
}

// With nothing to watch the parker decides under the fleet lock, lets go
// of its own lock, and exits; a machine that appears meanwhile keeps it.
func TestParkLoopExitsWhenNothingToWatch(t *testing.T) {
	f := &fakeFleet{running: map[string]bool{}, parked: map[string]string{},
		s: State{Machines: []*Machine{{Name: "p-1", Desired: WantSuspended, IdleSuspendSec: 60}, {Name: "p-2", Desired: WantRunning}}}}
	let := 0
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.loop(time.Now()).run(ctx, func() { let++ }); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil || let != 1 || len(f.locked) < 2 {
		t.Errorf("did not exit by itself under the lock: ctx %v, let go %d times, locked reads %v", ctx.Err(), let, f.locked)
	}

	// The first look sees nothing, the locked read of the decision to
	// exit a new machine: the parker stays.
	f = &fakeFleet{running: map[string]bool{}, parked: map[string]string{}}
	l := f.loop(time.Now())
	inner := l.load
	lockedReads := 0
	l.load = func(ctx context.Context, locked bool) (*State, func(), error) {
		s, u, err := inner(ctx, locked)
		if locked {
			lockedReads++
		}
		if locked && lockedReads == 2 {
			s.Machines = []*Machine{{Name: "p-1", Desired: WantRunning, IdleSuspendSec: 60}}
		}
		return s, u, err
	}
	let = 0
	if err := l.run(ctx, func() { let++ }); err != nil {
		t.Fatal(err)
	}
	if f.round < 1 || let != 1 {
		t.Errorf("exited although a machine came: rounds %d, let go %d", f.round, let)
	}
}

// The real park leaves alone a machine that is no longer the one watched.
func TestParkLeavesMovedMachinesAlone(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	c := &Controller{Layout: l, Fleet: "p", Driver: fakeDriver{}}
	st := c.Store()
	s := &State{Version: stateVersion, Fleet: "p", Machines: []*Machine{
		{Name: "p-1", Index: 1, Desired: WantSuspended, PID: 0, IdleSuspendSec: 60},
		{Name: "p-2", Index: 2, Desired: WantStopped, IdleSuspendSec: 60},
		{Name: "p-3", Index: 3, Desired: WantRunning, PID: 42, IdleSuspendSec: 60},
		{Name: "p-4", Index: 4, Desired: WantRunning, PID: 7},
	}}
	if err := os.MkdirAll(l.FleetDir("p"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	p := ParkingOf(c)
	for _, tc := range []struct {
		name string
		pid  int
	}{{"p-1", 0}, {"p-2", 0}, {"p-3", 41}, {"p-4", 7}, {"p-9", 1}} {
		parked, err := p.park(context.Background(), tc.name, tc.pid, "idle 1m: agent succeeded")
		if parked || err != nil {
			t.Errorf("%s: parked %v, %v", tc.name, parked, err)
		}
	}
	// p-3 is the one watched, but the fake driver cannot suspend: said,
	// not done.
	if parked, err := p.park(context.Background(), "p-3", 42, "idle 1m: agent succeeded"); parked || err == nil {
		t.Errorf("p-3 on a driver without snapshots: parked %v, %v", parked, err)
	}
	got, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range got.Machines {
		if m.SuspendReason != "" {
			t.Errorf("%s: reason %q recorded", m.Name, m.SuspendReason)
		}
	}
}

func TestAwakeLockKeepsTheParkerOff(t *testing.T) {
	m := &Machine{Name: "p-1", Dir: t.TempDir()}
	release, err := holdAwake(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if _, free, err := tryLock(awakeLockPath(m)); free || err != nil {
		t.Fatalf("the parker got the lock of a machine in use: %v %v", free, err)
	}
	second, err := holdAwake(context.Background(), m) // two commands at once
	if err != nil {
		t.Fatal(err)
	}
	release()
	second()
	unlock, free, err := tryLock(awakeLockPath(m))
	if !free || err != nil {
		t.Fatalf("released, still held: %v %v", free, err)
	}
	unlock()
	gone := &Machine{Name: "p-2", Dir: filepath.Join(t.TempDir(), "gone")}
	if r, err := holdAwake(context.Background(), gone); err != nil {
		t.Errorf("no folder: %v", err)
	} else {
		r()
	}
}

// KeepAwake on machines nobody parked takes no fleet lock and changes
// nothing; it brings the caller's records up to date.
func TestKeepAwakeWithoutParkedMachines(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	c := &Controller{Layout: l, Fleet: "p", Driver: fakeDriver{}}
	dir := l.MachineDir("p", "p-1")
	os.MkdirAll(dir, 0o700)
	s := &State{Version: stateVersion, Fleet: "p", Machines: []*Machine{
		{Name: "p-1", Index: 1, Dir: dir, Desired: WantSuspended},
	}}
	if err := c.Store().Save(s); err != nil {
		t.Fatal(err)
	}
	unlock, err := c.lock(context.Background()) // held: KeepAwake must not wait for it
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	stale := &Machine{Name: "p-1", Dir: dir, Desired: WantRunning}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	release, err := ParkingOf(c).KeepAwake(ctx, []*Machine{stale})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if stale.Desired != WantSuspended {
		t.Errorf("record not brought up to date: %s", stale.Desired)
	}
}

func TestRotatingLogStaysBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), layout.ParkerLog)
	r := &rotatingLog{path: path, max: 200}
	for i := 0; i < 50; i++ {
		r.Write([]byte("p-1: read its agent: ssh: handshake failed\n"))
	}
	r.Close()
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() > 200 {
			t.Errorf("%s: %v %v", p, fi, err)
		}
	}
}

func TestWithoutCredentials(t *testing.T) {
	got := withoutCredentials([]string{"HOME=/h", "ANTHROPIC_API_KEY=sk", "CLAUDE_CODE_OAUTH_TOKEN=t", CredentialEnv + "=x", "FLEET_HOME=/f", "ANTHROPIC_API_KEY_X=keep"})
	if len(got) != 3 || got[0] != "HOME=/h" || got[1] != "FLEET_HOME=/f" {
		t.Errorf("env %q", got)
	}
}

// ensureParker runs Self __park FLEET detached, without the model
// credentials, and not while a parker holds the lock.
func TestEnsureParkerStartsOneDetached(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	os.MkdirAll(l.FleetDir("p"), 0o700)
	out := filepath.Join(t.TempDir(), "args")
	self := filepath.Join(t.TempDir(), "fleet")
	os.WriteFile(self, []byte("#!/bin/sh\necho \"$@ key=${ANTHROPIC_API_KEY:-none}\" >> "+out+"\n"), 0o755)
	t.Setenv("ANTHROPIC_API_KEY", "sk-secret")
	c := &Controller{Layout: l, Fleet: "p", Self: self}
	ensureParker(c)
	var b []byte
	for i := 0; i < 100 && len(b) == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		b, _ = os.ReadFile(out)
	}
	if string(b) != ParkCommand+" p key=none\n" {
		t.Fatalf("started %q", b)
	}
	unlock, ok, err := tryLock(parkerFile(c, layout.ParkerLock))
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	defer unlock()
	os.Remove(out)
	ensureParker(c)
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(out); err == nil {
		t.Error("a second parker was started while one holds the lock")
	}
}
