package cockpit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
)

var hostile = termsafetest.Hostile

var rawControl = termsafetest.RawControl

// The screen's own styling: bold, dim, reverse, yellow, reset.
var ownStyle = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// Guest strings that reach the model by any road (not only through the
// snapshot parser, which cleans them) are drawn clean.
func TestTheScreenDrawsNoGuestControls(t *testing.T) {
	for _, h := range hostile {
		u, _ := newUI(200, 30)
		u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-1", Status: session.Status{State: session.Working, Tool: "Bash" + h, LastLine: "out " + h + " put"}})
		u.Update(AgentMsg{At: t0, Fleet: "p", Machine: "p-2", Status: session.Status{State: session.Waiting, Message: "need " + h}})
		u.Update(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0, Proxy: "egress", Verdict: "deny", Host: "evil" + h + ".test", Port: 443, Reason: "no " + h}})
		u.Update(actionDone{text: "p-1: kill", err: errors.New("failed " + h)})
		for _, view := range []string{u.View(), func() string { press(u, "down"); return u.View() }()} {
			if where, bad := rawControl(ownStyle.ReplaceAllString(view, "")); bad {
				t.Fatalf("%q: the screen draws raw %s:\n%q", h, where, view)
			}
		}
		ev := Event{Machine: "p-1", Kind: "agent", State: "waiting", Message: h}
		if where, bad := rawControl(ev.Text()); bad {
			t.Fatalf("event text: raw %s", where)
		}
	}
}

func TestDesktopNotificationsAreCleanAndNotMarkup(t *testing.T) {
	for _, goos := range []string{"linux", "darwin"} {
		for _, h := range append(hostile, `<a href="https://evil.test">click</a>`, "<b>&amp;</b>") {
			r := &recordRunner{}
			n := &Notifier{Desktop: true, Runner: r, GOOS: goos, LookPath: func(p string) (string, error) { return p, nil }}
			n.Notify(Event{Fleet: "p", Machine: "p-1" + h, Kind: "egress_denied", Host: "x" + h, Message: h})
			n.Wait()
			if len(r.cmds) != 1 {
				t.Fatalf("%s: %d commands", goos, len(r.cmds))
			}
			for _, a := range r.cmds[0].Args {
				if where, bad := rawControl(a); bad {
					t.Errorf("%s %q: argument %q has raw %s", goos, h, a, where)
				}
			}
			if body := r.cmds[0].Args[len(r.cmds[0].Args)-1]; goos == "linux" && strings.ContainsAny(body, "<>") {
				t.Errorf("notify-send body %q has markup", body)
			}
		}
	}
}

// gateRunner is a notify command that blocks until released, counting
// how many run at once and in all.
type gateRunner struct {
	release       chan struct{}
	running, peak atomic.Int32
	total         atomic.Int32
	mu            sync.Mutex
	stdins        []string
}

func (g *gateRunner) Run(ctx context.Context, c execx.Cmd) ([]byte, error) {
	n := g.running.Add(1)
	defer g.running.Add(-1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	g.total.Add(1)
	if c.Stdin != nil {
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			k, err := c.Stdin.Read(buf)
			b.Write(buf[:k])
			if err != nil {
				break
			}
		}
		g.mu.Lock()
		g.stdins = append(g.stdins, b.String())
		g.mu.Unlock()
	}
	if g.release != nil {
		<-g.release
	}
	return nil, nil
}

// A guest refusing a thousand names in a second is one notification and
// one summary, not two thousand processes.
func TestNotificationsFromOneMachineAreCoalesced(t *testing.T) {
	r := &gateRunner{}
	clock := t0
	n := &Notifier{Desktop: true, Command: "x", Runner: r, GOOS: "linux", LookPath: func(p string) (string, error) { return p, nil },
		Quiet: time.Hour, Now: func() time.Time { return clock }}
	for i := 0; i < 1000; i++ {
		n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "egress_denied", Host: fmt.Sprintf("n%d.test", i), Port: 443})
		clock = clock.Add(time.Millisecond)
	}
	// An agent that fails among them is the one the summary names.
	code := 1
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "agent", State: "failed", ExitCode: &code})
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "egress_denied", Host: "late.test", Port: 443})
	n.Wait()
	if got := r.total.Load(); got != 4 {
		t.Fatalf("%d commands for 1002 events of one machine, want 4 (one notification and one summary, two commands each)", got)
	}
	var last Event
	for _, in := range r.stdins { // the commands ran in any order
		var ev Event
		if err := json.Unmarshal([]byte(in), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Folded > 0 {
			last = ev
		}
	}
	if last.State != "failed" || last.Folded != 1000 {
		t.Fatalf("summary %+v, stdins %q", last, r.stdins)
	}
	if !strings.Contains(last.Text(), "and 1000 more") {
		t.Fatalf("summary text %q", last.Text())
	}
	// Once the quiet time has passed, the next event goes out at once.
	clock = clock.Add(time.Hour)
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "egress_denied", Host: "after.test", Port: 443})
	n.mu.Lock()
	heldBack := n.machines["p/p-1"].ev != nil
	n.mu.Unlock()
	if heldBack {
		t.Fatal("an event after the quiet time was held back")
	}
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "egress_denied", Host: "held.test", Port: 443})
	n.Wait() // delivers the held one too
	if got := r.total.Load(); got != 8 {
		t.Fatalf("after the quiet time: %d commands, want 8", got)
	}
}

// An agent that ends right after its budget ran out is folded into the
// budget's notification, not the other way round: the user is told what
// stops the agent, with its end counted in the summary.
func TestASpentBudgetOutranksTheAgentsEndWhenFolded(t *testing.T) {
	r := &gateRunner{}
	n := &Notifier{Command: "x", Runner: r, Quiet: time.Hour, Now: func() time.Time { return t0 }}
	code := 0
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: KindAgent, State: "succeeded", ExitCode: &code})
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: KindBudgetReached})
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: KindAgent, State: "succeeded", ExitCode: &code})
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: KindEgressDenied, Host: "x.test", Port: 443})
	n.Wait()
	var kinds []string
	for _, in := range r.stdins {
		var ev Event
		if err := json.Unmarshal([]byte(in), &ev); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, fmt.Sprintf("%s+%d", ev.Kind, ev.Folded))
	}
	slices.Sort(kinds)
	if got := strings.Join(kinds, " "); got != "agent+0 budget_reached+2" {
		t.Fatalf("notify commands got %s, want the agent's end, then the budget with the two events after it folded in", got)
	}
}

// Many machines at once: at most MaxRunning commands run, at most
// MaxQueued wait, the rest are dropped and counted.
func TestNotifyCommandsAreBounded(t *testing.T) {
	r := &gateRunner{release: make(chan struct{})}
	var failed atomic.Int32
	n := &Notifier{Desktop: true, Command: "x", Runner: r, GOOS: "linux", LookPath: func(p string) (string, error) { return p, nil },
		Failed: func(error) { failed.Add(1) }}
	before := runtime.NumGoroutine()
	for i := 0; i < 1000; i++ {
		n.Notify(Event{Time: t0, Fleet: "p", Machine: fmt.Sprintf("p-%d", i), Kind: "egress_denied", Host: "x.test", Port: 443})
	}
	if g := runtime.NumGoroutine() - before; g > MaxNotifyCommands+MaxQueuedNotifyCommands+4 {
		t.Fatalf("%d goroutines for 2000 commands", g)
	}
	if d := n.Dropped(); d != 2000-MaxNotifyCommands-MaxQueuedNotifyCommands {
		t.Fatalf("dropped %d", d)
	}
	if failed.Load() != 1 {
		t.Fatalf("the drops were reported %d times, want once", failed.Load())
	}
	close(r.release)
	n.Wait()
	if p := r.peak.Load(); p > MaxNotifyCommands || p == 0 {
		t.Fatalf("%d commands ran at once, want at most %d", p, MaxNotifyCommands)
	}
	if got := r.total.Load(); got != MaxNotifyCommands+MaxQueuedNotifyCommands {
		t.Fatalf("%d commands ran, want %d", got, MaxNotifyCommands+MaxQueuedNotifyCommands)
	}
	// Slots free again: the next notification is delivered.
	n.Notify(Event{Time: t0, Fleet: "p", Machine: "q-1", Kind: "egress_denied", Host: "x.test", Port: 443})
	n.Wait()
	if got := r.total.Load(); got != MaxNotifyCommands+MaxQueuedNotifyCommands+2 {
		t.Fatalf("after the flood: %d commands", got)
	}
}
