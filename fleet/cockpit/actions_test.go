package cockpit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
	"github.com/agentfleet/agentfleet/internal/workspace"
	tea "github.com/charmbracelet/bubbletea"
)

// actionsOn is fleet top's keys on fake fleet p, each action with its
// own controller as fleet top gives it; opened counts them.
func actionsOn(t *testing.T, d *fakeDriver, names ...string) (*ControllerActions, *int, *[][]workspace.Summary) {
	t.Helper()
	root := t.TempDir()
	newFakeFleet(t, root, "p", d, names...)
	opened := 0
	var printed [][]workspace.Summary
	return &ControllerActions{
		Ctx: context.Background(),
		Open: func(fl string, progress io.Writer) (*fleet.Controller, error) {
			if fl != "p" {
				return nil, errors.New("no fleet " + fl)
			}
			opened++
			return &fleet.Controller{Layout: fleet.Layout{Root: root}, Fleet: fl, Driver: d, Progress: progress}, nil
		},
		Attach:    func(fl, m string) *exec.Cmd { return exec.Command("true") },
		Summaries: func(w io.Writer, sums []workspace.Summary) { printed = append(printed, sums) },
	}, &opened, &printed
}

func TestBackgroundActionsCallTheController(t *testing.T) {
	d := &fakeDriver{}
	acts, opened, _ := actionsOn(t, d, "p-1", "p-2")
	out, err := acts.Run("p", "p-2", "stop", "")
	if err != nil || out != "p-2: stopped" {
		t.Fatalf("stop: %q %v", out, err)
	}
	if got := strings.Join(d.called(), ","); got != "stop p-2" {
		t.Errorf("the driver was asked %q", got)
	}
	c, _ := acts.Open("p", io.Discard)
	s, _ := c.Store().Load()
	if s.Find("p-2").Desired != fleet.WantStopped || s.Find("p-1").Desired != fleet.WantRunning {
		t.Errorf("the controller did not record the stop: %+v %+v", s.Find("p-1"), s.Find("p-2"))
	}
	// A machine the fleet does not have is the controller's refusal, and
	// nothing reaches the driver.
	for _, action := range []string{"stop", "kill", "start", "run"} {
		if _, err := acts.Run("p", "p-9", action, "a task"); err == nil || !strings.Contains(err.Error(), "p-9") {
			t.Errorf("%s p-9: %v", action, err)
		}
	}
	// The fake driver has no snapshots: the controller says so.
	if _, err := acts.Run("p", "p-1", "suspend", ""); err == nil {
		t.Errorf("suspend on a driver without snapshots: %v", err)
	}
	if _, err := acts.Run("p", "p-1", "destroy", ""); err == nil {
		t.Error("an action the cockpit has no key for ran")
	}
	if got := len(d.called()); got != 1 {
		t.Errorf("the driver was asked %d times, want once: %v", got, d.called())
	}
	if *opened < 8 {
		t.Errorf("%d controllers opened for 8 actions: they must not share one's progress", *opened)
	}
}

// Quitting the cockpit while a key's action runs neither cuts it in half
// (a stop the state file never records) nor leaves it behind: Wait
// waits for it.
func TestQuittingLetsARunningActionFinish(t *testing.T) {
	d := &fakeDriver{stopping: make(chan struct{}, 1), release: make(chan struct{})}
	acts, _, _ := actionsOn(t, d, "p-1")
	ctx, quit := context.WithCancel(context.Background())
	acts.Ctx = ctx
	done := make(chan error, 1)
	go func() { _, err := acts.Run("p", "p-1", "stop", ""); done <- err }()
	<-d.stopping
	if acts.Running() != 1 {
		t.Fatalf("%d actions running, want 1", acts.Running())
	}
	quit()
	waited := make(chan struct{})
	go func() { acts.Wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("Wait returned while the stop was still running")
	case <-time.After(50 * time.Millisecond):
	}
	close(d.release)
	<-waited
	if err := <-done; err != nil {
		t.Fatalf("the stop was cut off by quitting: %v", err)
	}
	c, _ := acts.Open("p", io.Discard)
	if s, _ := c.Store().Load(); s.Find("p-1").Desired != fleet.WantStopped {
		t.Error("the stop finished but was not recorded")
	}
	if acts.Running() != 0 {
		t.Errorf("%d actions still counted as running", acts.Running())
	}
}

func TestAllowChangesTheMachinesPolicy(t *testing.T) {
	acts, _, _ := actionsOn(t, &fakeDriver{}, "p-1")
	c, _ := acts.Open("p", io.Discard)
	if err := acts.Allow("p", "p-1", "pypi.org"); err == nil || !strings.Contains(err.Error(), "open egress") {
		t.Fatalf("allow on a machine with open egress: %v", err)
	}
	if err := c.Store().Update(context.Background(), func(s *fleet.State) error {
		s.Find("p-1").Network = &fleet.Network{Egress: egress.ModeAllowlist}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s, _ := c.Store().Load()
	pol, _ := egress.Build(egress.ModeAllowlist, nil, nil, nil)
	if err := egress.SavePolicy(s.Find("p-1").Dir, pol); err != nil {
		t.Fatal(err)
	}
	if err := acts.Allow("p", "p-1", "pypi.org"); err != nil {
		t.Fatal(err)
	}
	if p, err := egress.LoadPolicy(s.Find("p-1").Dir); err != nil || !strings.Contains(strings.Join(p.Allow, " "), "pypi.org") {
		t.Errorf("policy after allow: %v %v", p.Allow, err)
	}
	if err := acts.Allow("p", "p-1", "*.*"); err == nil {
		t.Error("a pattern fleet net allow refuses was allowed")
	}
}

// An action's error reaches the screen as one clean line, however the
// hypervisor (or a guest, through it) wrote it.
func TestAnActionsErrorIsShownClean(t *testing.T) {
	for _, h := range termsafetest.Hostile {
		d := &fakeDriver{stopErr: errors.New("qemu: " + h + " refused\nsecond line " + h)}
		acts, _, _ := actionsOn(t, d, "p-1")
		u := &UI{Model: NewModel(), Actions: acts, Title: "fleet top · p"}
		u.Update(tea.WindowSizeMsg{Width: 120, Height: 20})
		u.Update(MachinesMsg{Fleet: "p", Machines: []fleet.MachineStatus{{Name: "p-1", State: fleet.StateRunning}}})
		cmd := press(u, "S")
		if cmd == nil {
			t.Fatal("S ran nothing")
		}
		u.Update(cmd())
		if len(d.called()) != 1 {
			t.Fatalf("the stop never reached the driver: %v", d.called())
		}
		screen := u.View()
		if !strings.Contains(screen, "p-1: stop: second line") {
			t.Errorf("%q: the error is not on the screen:\n%s", h, screen)
		}
		if c, raw := termsafetest.RawControl(strings.NewReplacer("\x1b[1m", "", "\x1b[0m", "", "\x1b[2m", "", "\x1b[7m", "", "\x1b[33m", "").Replace(screen)); raw {
			t.Errorf("%q reached the screen raw as %q:\n%s", h, c, screen)
		}
	}
}

func runOnTerminal(t *testing.T, c tea.ExecCommand, typed string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errw bytes.Buffer
	c.SetStdin(strings.NewReader(typed))
	c.SetStdout(&out)
	c.SetStderr(&errw)
	err = c.Run()
	return out.String(), errw.String(), err
}

// collect and apply run the controller's collect, print its summary the
// CLI's way, and ask before the controller merges.
func TestCollectAndApplyOnTheTerminal(t *testing.T) {
	acts, _, printed := actionsOn(t, &fakeDriver{}, "p-1")
	out, errs, err := runOnTerminal(t, acts.Command("p", "p-1", "collect"), "\n")
	if err != nil || !strings.Contains(errs, "fleet: p-1 was spawned without a workspace (--sync none): nothing to collect") || !strings.Contains(out, "[enter returns to fleet top]") || len(*printed) != 1 {
		t.Fatalf("collect: %v\nstdout %q\nstderr %q\nprinted %d", err, out, errs, len(*printed))
	}
	// The collect failed: nothing is asked, nothing merged.
	out, errs, err = runOnTerminal(t, acts.Command("p", "p-1", "apply"), "y\n\n")
	if err == nil || strings.Contains(out, "Merge fleet/") || !strings.Contains(errs, "nothing to collect") {
		t.Fatalf("apply after a failed collect: %v\nstdout %q\nstderr %q", err, out, errs)
	}
}

// The pager gets the controller's answer (here its refusal) cleaned, as
// the agent's diff and log would be.
func TestPagedActionsReachTheControllerAndAreCleaned(t *testing.T) {
	t.Setenv("PAGER", "cat")
	acts, _, _ := actionsOn(t, &fakeDriver{}, "p-1")
	out, _, err := runOnTerminal(t, acts.Command("p", "p-1", "diff"), "")
	if err != nil || !strings.Contains(out, "fleet: p-1 was not spawned with --sync git") {
		t.Fatalf("diff: %v %q", err, out)
	}
	for _, h := range termsafetest.Hostile {
		out, _, err := runOnTerminal(t, acts.Command("p"+h, "p-1", "logs"), "")
		if err != nil || !strings.Contains(out, "fleet: ") {
			t.Fatalf("logs %q: %v %q", h, err, out)
		}
		if c, raw := termsafetest.RawControl(out); raw {
			t.Errorf("%q reached the pager raw as %q: %q", h, c, out)
		}
	}
}
