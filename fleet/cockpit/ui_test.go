package cockpit

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/vm"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
)

type fakeActions struct {
	commands, runs, allows []string
	allowErr               error
}

func (f *fakeActions) Command(fl, m, action string) tea.ExecCommand {
	f.commands = append(f.commands, m+" "+action)
	return ProcessCommand(exec.Command("true"))
}

func (f *fakeActions) Run(fl, m, action, arg string) (string, error) {
	f.runs = append(f.runs, strings.TrimSpace(m+" "+action+" "+arg))
	return m + ": " + action + " ok\n", nil
}

func (f *fakeActions) Allow(fl, m, pattern string) error {
	f.allows = append(f.allows, m+" "+pattern)
	return f.allowErr
}

func press(u *UI, keys ...string) tea.Cmd {
	var last tea.Cmd
	for _, k := range keys {
		var msg tea.KeyMsg
		switch k {
		case "enter":
			msg = tea.KeyMsg{Type: tea.KeyEnter}
		case "down":
			msg = tea.KeyMsg{Type: tea.KeyDown}
		case "up":
			msg = tea.KeyMsg{Type: tea.KeyUp}
		case "esc":
			msg = tea.KeyMsg{Type: tea.KeyEsc}
		case "backspace":
			msg = tea.KeyMsg{Type: tea.KeyBackspace}
		default:
			msg = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		_, last = u.Update(msg)
	}
	return last
}

var testClock = t0

func newUI(w, h int) (*UI, *fakeActions) {
	acts := &fakeActions{}
	testClock = t0
	u := &UI{Model: NewModel(), Actions: acts, Title: "fleet top · p", now: func() time.Time { return testClock }}
	u.Update(tea.WindowSizeMsg{Width: w, Height: h})
	one := 1
	u.Update(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{
		{Name: "p-1", State: "running", Spend: &fleet.Spend{Usage: egress.Usage{Calls: 2, InputTokens: 12000, OutputTokens: 345, CostUSD: 0.0412}},
			Memory: &vm.HostMemory{Unique: 61 << 20, Shared: 188 << 20}},
		{Name: "p-2", State: "running", Spend: &fleet.Spend{Reached: true}},
		{Name: "p-3", State: "suspended"},
	}})
	u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-1", Status: session.Status{State: session.Working, Tool: "Bash", ElapsedSec: 80, Turns: 3, LastLine: "→ Bash go test ./...", Commits: &one, Files: &one}})
	u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-2", Status: session.Status{State: session.Failed, ExitCode: 2}})
	return u, acts
}

func screen(t *testing.T, u *UI, w, h int) string {
	t.Helper()
	v := u.View()
	lines := strings.Split(v, "\n")
	if len(lines) != h {
		t.Fatalf("%d lines for a %d-line terminal", len(lines), h)
	}
	for _, l := range lines {
		if ansi.StringWidth(l) > w {
			t.Fatalf("line wider than %d: %q", w, l)
		}
	}
	return ansi.Strip(v)
}

func TestViewFitsAndShowsTheRows(t *testing.T) {
	for _, size := range [][2]int{{80, 24}, {120, 40}, {40, 10}, {200, 5}} {
		u, _ := newUI(size[0], size[1])
		s := screen(t, u, size[0], size[1])
		if size[0] == 80 {
			for _, want := range []string{"p-1", "working Bash", "1m20s", "12k", "$0.04", "1c 1f", "→ Bash go test", "p-2", "failed (2)", "budget reached", "p-3", "suspended", "3 machines · 1 working · 1 failed"} {
				if !strings.Contains(s, want) {
					t.Errorf("80x24 lacks %q:\n%s", want, s)
				}
			}
		}
		if size[0] == 120 {
			for _, want := range []string{"MEM", "61M+188M", "61M host memory of their own"} {
				if !strings.Contains(s, want) {
					t.Errorf("120x40 lacks %q:\n%s", want, s)
				}
			}
		}
	}
	// Resizing redraws at the new size.
	u, _ := newUI(80, 24)
	u.Update(tea.WindowSizeMsg{Width: 60, Height: 12})
	screen(t, u, 60, 12)
}

func TestKeysRunTheActions(t *testing.T) {
	u, acts := newUI(80, 24)
	if cmd := press(u, "enter"); cmd == nil || len(acts.commands) != 1 || acts.commands[0] != "p-1 attach" {
		t.Fatalf("enter on a working agent: %v", acts.commands)
	}
	for _, k := range []string{"l", "d", "c", "a"} {
		press(u, k)
	}
	if got := strings.Join(acts.commands, ","); got != "p-1 attach,p-1 logs,p-1 diff,p-1 collect,p-1 apply" {
		t.Fatalf("%s", got)
	}
	// Background actions report in the notice line.
	run := func(cmd tea.Cmd) {
		if cmd == nil {
			t.Fatal("no action")
		}
		u.Update(cmd())
	}
	run(press(u, "k"))
	if !strings.Contains(screen(t, u, 80, 24), "p-1: kill ok") {
		t.Error("kill's result not shown")
	}
	press(u, "down")
	if cmd := press(u, "enter"); cmd != nil {
		t.Fatal("attach to a failed agent")
	}
	if !strings.Contains(screen(t, u, 80, 24), "p-2 has no live agent") {
		t.Error("no word on why enter did nothing")
	}
	// n asks for a task, typed in the notice line.
	press(u, "n", "f", "i", "x", " ", "i", "t", "backspace")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "task for p-2: fix i") {
		t.Fatalf("task line:\n%s", s)
	}
	run(press(u, "enter"))
	press(u, "down")
	run(press(u, "s")) // p-3 is suspended: s resumes it
	press(u, "up", "up")
	if got := strings.Join(acts.runs, ","); got != "p-1 kill,p-2 run fix i,p-3 start" {
		t.Fatalf("%s", got)
	}
	if cmd := press(u, "n"); cmd != nil || u.mode != normal {
		t.Error("n on a working agent asked for a task")
	}
	if cmd := press(u, "q"); cmd == nil || cmd() != tea.Quit() {
		t.Error("q does not quit")
	}
}

func TestFilterAndHelp(t *testing.T) {
	u, _ := newUI(80, 24)
	press(u, "/", "f", "a", "i", "l")
	s := screen(t, u, 80, 24)
	if strings.Contains(s, "p-1 ") || !strings.Contains(s, "p-2") || !strings.Contains(s, "filter: fail") {
		t.Fatalf("filtered:\n%s", s)
	}
	press(u, "enter")
	if u.filter != "fail" {
		t.Fatal("enter dropped the filter")
	}
	press(u, "/", "esc")
	if u.filter != "" || !strings.Contains(screen(t, u, 80, 24), "p-1") {
		t.Fatal("esc does not clear the filter")
	}
	press(u, "?")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "allow the host it was refused") {
		t.Fatalf("help:\n%s", s)
	}
	press(u, "x")
	if u.mode != normal {
		t.Fatal("a key does not close help")
	}
}

func TestRefusalShownAndAllowedFromTheUI(t *testing.T) {
	u, acts := newUI(80, 24)
	u.Update(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0, Proxy: "egress", Verdict: "deny", Host: "pypi.org", Port: 443, Reason: egress.ReasonNotAllowed}})
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1 was refused pypi.org · e allows it (not in the allowlist)") {
		t.Fatalf("refusal not shown:\n%s", s)
	}
	cmd := press(u, "e")
	u.Update(cmd())
	if len(acts.allows) != 1 || acts.allows[0] != "p-1 pypi.org" {
		t.Fatalf("%v", acts.allows)
	}
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1: allowed pypi.org") {
		t.Fatalf("after allowing:\n%s", s)
	}
	testClock = t0.Add(10 * time.Second) // the word on the allow has been read
	// A refusal allowing cannot fix says so, and e does nothing.
	u.Update(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0, Proxy: "egress", Verdict: "deny", Host: "metadata.internal", Port: 80, Reason: "metadata.internal resolves to 169.254.169.254"}})
	if s := screen(t, u, 80, 24); !strings.Contains(s, "allowing would not help") {
		t.Fatalf("%s", s)
	}
	if cmd := press(u, "e"); cmd != nil || len(acts.allows) != 1 {
		t.Fatal("e tried to allow a private address")
	}
	// A failed allow is reported, not swallowed.
	acts.allowErr = errors.New("p-1 has open egress: there is no policy to change")
	u.Update(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0.Add(time.Hour), Proxy: "egress", Verdict: "deny", Host: "x.test", Port: 8080, Reason: egress.ReasonNotAllowed}})
	u.Update(press(u, "e")())
	if acts.allows[1] != "p-1 x.test:8080" || !strings.Contains(screen(t, u, 80, 24), "no policy to change") {
		t.Fatalf("%v\n%s", acts.allows, screen(t, u, 80, 24))
	}
}

func TestANewRefusalIsShownOverAnEarlierWordButARepeatIsNot(t *testing.T) {
	u, _ := newUI(80, 24)
	deny := func(at time.Time) DecisionMsg {
		return DecisionMsg{Fleet: "p", Machine: "p-2", Entry: egress.Entry{Time: at, Proxy: "egress", Verdict: "deny", Host: "denied.test", Port: 8080, Reason: egress.ReasonNotAllowed}}
	}
	u.say("back from attach")
	testClock = t0.Add(time.Second)
	u.Update(deny(testClock))
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-2 was refused denied.test:8080") {
		t.Fatalf("a refusal a second after the user's word waits behind it:\n%s", s)
	}
	testClock = t0.Add(2 * time.Second)
	u.say("p-1: stopped")
	testClock = t0.Add(3 * time.Second)
	u.Update(deny(testClock)) // the agent tries again: not news
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1: stopped") {
		t.Fatalf("a repeated refusal drowned the user's word:\n%s", s)
	}
	testClock = t0.Add(8 * time.Second) // the word has been read
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-2 was refused denied.test:8080") {
		t.Fatalf("the refusal is not offered again:\n%s", s)
	}
}

// A guest trying new names, each a new refusal, leaves the user's word up
// a second; another machine's refusal does not put the selected one's
// older refusal in front of the word.
func TestAFloodOfNewNamesCannotKeepTheUsersWordOff(t *testing.T) {
	u, _ := newUI(80, 24) // p-1 is selected
	deny := func(machine, host string) {
		u.Update(DecisionMsg{Fleet: "p", Machine: machine, Entry: egress.Entry{Time: testClock, Proxy: "egress", Verdict: "deny", Host: host, Port: 443, Reason: egress.ReasonNotAllowed}})
	}
	said := testClock
	u.say("p-1: allowing old.test")
	for i := 0; i < 6; i++ {
		testClock = testClock.Add(150 * time.Millisecond)
		deny("p-1", fmt.Sprintf("n%d.test", i))
		if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1: allowing old.test") {
			t.Fatalf("a new name %s after the word replaced it:\n%s", testClock.Sub(said), s)
		}
	}
	testClock = said.Add(1100 * time.Millisecond)
	deny("p-1", "n9.test")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1 was refused n9.test") {
		t.Fatalf("a new refusal a second after the word is not shown:\n%s", s)
	}
	// p-1's newest refusal is the one the line offers; p-2's news is not it.
	testClock = testClock.Add(time.Second)
	u.say("p-1: allowed n9.test")
	testClock = testClock.Add(2 * time.Second)
	deny("p-2", "other.test")
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-1: allowed n9.test") {
		t.Fatalf("p-2's refusal put p-1's older one in front of the word:\n%s", s)
	}
}

func TestNotableEventsReachTheNotifier(t *testing.T) {
	u, _ := newUI(80, 24)
	r := &recordRunner{}
	u.Notifier = &Notifier{Command: "x", Runner: r}
	u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-1", Status: session.Status{State: session.Waiting, Message: "need input"}})
	u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-1", Status: session.Status{State: session.Working}}) // not notable
	u.Notifier.Wait()
	if len(r.in) != 1 || !strings.Contains(r.in[0], `"state":"waiting"`) {
		t.Fatalf("%v", r.in)
	}
}

func TestAnotherMachinesRefusalIsOfferedToo(t *testing.T) {
	u, acts := newUI(80, 24) // p-1 is selected
	u.Update(DecisionMsg{Fleet: "p", Machine: "p-2", Entry: egress.Entry{Time: t0, Proxy: "egress", Verdict: "deny", Host: "npmjs.org", Port: 443, Reason: egress.ReasonNotAllowed}})
	if s := screen(t, u, 80, 24); !strings.Contains(s, "p-2 was refused npmjs.org") {
		t.Fatalf("%s", s)
	}
	u.Update(press(u, "e")())
	if len(acts.allows) != 1 || acts.allows[0] != "p-2 npmjs.org" {
		t.Fatalf("e allowed %v, want p-2's host for p-2", acts.allows)
	}
}

func TestHumanBytes(t *testing.T) {
	for b, want := range map[uint64]string{0: "0M", 1: "0M", 600 << 10: "1M", 164 << 20: "164M", 1023 << 20: "1023M",
		1 << 30: "1.0G", 1536 << 20: "1.5G", 24 << 30: "24G", 1<<64 - 1: "17179869184G"} {
		if got := HumanBytes(b); got != want {
			t.Errorf("%d: %q, want %q", b, got, want)
		}
	}
	if HostMem(nil) != "-" || HostMem(&vm.HostMemory{Unique: 61 << 20, Shared: 1 << 30}) != "61M+1.0G" {
		t.Errorf("host mem: %q", HostMem(&vm.HostMemory{Unique: 61 << 20, Shared: 1 << 30}))
	}
}
