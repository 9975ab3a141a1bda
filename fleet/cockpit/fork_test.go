package cockpit

import (
	"context"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
)

// fork is the controller's fork: its refusals are the key's, and a bad
// count never reaches it.
func TestForkActionCallsTheController(t *testing.T) {
	d := &fakeDriver{}
	acts, _, _ := actionsOn(t, d, "p-1")
	// The fake driver cannot capture a running machine, as VirtualBox.
	if _, err := acts.Run("p", "p-1", "fork", "1"); err == nil || !strings.Contains(err.Error(), "cannot capture a running one") {
		t.Fatalf("fork on a cold-boot driver: %v", err)
	}
	if _, err := acts.Run("p", "p-9", "fork", "1"); err == nil || !strings.Contains(err.Error(), "p-9") {
		t.Errorf("fork of a machine the fleet lacks: %v", err)
	}
	for _, n := range []string{"", "0", "-1", "two", "65", "1e3", "99999999999999999999"} {
		if _, err := acts.Run("p", "p-1", "fork", n); err == nil || !strings.Contains(err.Error(), "children") {
			t.Errorf("fork into %q: %v", n, err)
		}
	}
	if got := d.called(); len(got) != 0 {
		t.Errorf("the driver was asked %v", got)
	}
	c, _ := acts.Open("p", nil)
	if s, _ := c.Store().Load(); len(s.Machines) != 1 {
		t.Errorf("a refused fork left %d machines", len(s.Machines))
	}
}

func TestForkCount(t *testing.T) {
	for in, want := range map[string]int{"1": 1, "3": 3, "64": fleet.MaxMachines, "007": 7} {
		if n, err := forkCount(in); err != nil || n != want {
			t.Errorf("%q: %d %v", in, n, err)
		}
	}
	for _, in := range append([]string{"", " 1", "+", "0x10", "1.5", "65"}, termsafetest.Hostile...) {
		if n, err := forkCount(in); err == nil {
			t.Errorf("%q was taken as %d", in, n)
		}
	}
}

func TestForkKeyAsksHowMany(t *testing.T) {
	u, acts := newUI(80, 24) // p-1 (working) is selected
	run := func(keys ...string) {
		t.Helper()
		cmd := press(u, keys...)
		if cmd == nil {
			t.Fatalf("%v ran nothing", keys)
		}
		u.Update(cmd())
	}
	press(u, "f")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "fork p-1 into how many (enter: 1): █") || !strings.Contains(s, "esc cancel") {
		t.Fatalf("f does not ask:\n%s", s)
	}
	run("enter")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1: fork ok") {
		t.Errorf("the fork's result is not shown:\n%s", s)
	}
	run("f", "3", "enter")
	press(u, "f", "2", "esc") // cancelled
	if cmd := press(u, "f", "x", "enter"); cmd != nil {
		t.Error("a count that is no number ran")
	}
	if s := screen(t, u, 80, 24); !strings.Contains(s, `p-1: the number of children must be a whole number, got "x"`) {
		t.Errorf("no word on the bad count:\n%s", s)
	}
	// p-3 is suspended by the user: a fork would be refused.
	press(u, "down", "down")
	if cmd := press(u, "f"); cmd != nil || u.mode != normal || !strings.Contains(screen(t, u, 80, 24), "only a running machine can be forked") {
		t.Errorf("f on a suspended machine: mode %v\n%s", u.mode, screen(t, u, 80, 24))
	}
	// A parked one is resumed by the fork.
	u.Update(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{
		{Name: "p-1", State: "running"}, {Name: "p-2", State: "running"},
		{Name: "p-3", State: fleet.StateSuspended, SuspendReason: "idle 15m: agent succeeded"},
	}})
	run("f", "enter")
	if got := strings.Join(acts.runs, ","); got != "p-1 fork 1,p-1 fork 3,p-3 fork 1" {
		t.Fatalf("%s", got)
	}
	press(u, "?")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "f      fork") {
		t.Errorf("help has no fork:\n%s", s)
	}
}

// A fork is drawn right under its source, and the cursor moves in the
// order drawn.
func TestForksAreDrawnUnderTheirSource(t *testing.T) {
	u, _ := newUI(80, 24)
	u.Update(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{
		{Name: "p-1", State: "running"}, {Name: "p-2", State: "running"},
		{Name: "p-4", State: "running", ForkOf: "p-1"}, {Name: "p-5", State: "running", ForkOf: "p-4"},
		{Name: "p-6", State: "running", ForkOf: "p-1"}, {Name: "p-7", State: "running", ForkOf: "gone-1" + termsafetest.Hostile[0]},
	}})
	s := screen(t, u, 80, 24)
	var names []string
	for _, l := range strings.Split(s, "\n")[2:20] {
		// A row's name cell is its columns 2 to 16; a detail line is
		// indented past it.
		if r := []rune(l); len(r) > 16 && r[2] != ' ' {
			names = append(names, strings.TrimSpace(string(r[2:16])))
		}
	}
	if got := strings.Join(names, " | "); got != "p-1 | ├ p-4 | │ └ p-5 | └ p-6 | p-2 | p-7" {
		t.Fatalf("rows drawn as %s\n%s", got, s)
	}
	press(u, "down")
	if r, _, _ := u.selected(); r.Name != "p-4" {
		t.Errorf("down from p-1 went to %s", r.Name)
	}
}

// The controller's view of the machines says which is whose fork, and
// the model puts it under its source.
func TestMachinesSayWhoseForkEachIs(t *testing.T) {
	c := newFakeFleet(t, t.TempDir(), "p", &fakeDriver{}, "p-1", "p-2", "p-3")
	if err := c.Store().Update(context.Background(), func(s *fleet.State) error {
		s.Find("p-3").ForkOf = "p-1"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ms, err := c.Machines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := NewModel()
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: ms})
	if got := drawn(m.Rows("")); got != "p-1 | └ p-3 | p-2" {
		t.Fatalf("rows %s from %+v", got, ms)
	}
	// The source destroyed: its fork is at the top level, in name order.
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: ms[1:]})
	if got := drawn(m.Rows("")); got != "p-2 | p-3" {
		t.Fatalf("rows %s after p-1 went", got)
	}
}
