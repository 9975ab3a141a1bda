package cockpit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/vm"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func machines(states ...string) MachinesMsg {
	msg := MachinesMsg{At: t0, Fleet: "p"}
	for i, s := range states {
		msg.Machines = append(msg.Machines, fleet.MachineStatus{Name: fmt.Sprintf("p-%d", i+1), State: s})
	}
	return msg
}

func agent(name string, st session.State, code int) AgentMsg {
	return AgentMsg{At: t0, Fleet: "p", Machine: name, Status: session.Status{State: st, ExitCode: code}}
}

func states(m *Model) string {
	var out []string
	for _, r := range m.Rows("") {
		out = append(out, r.Name+"="+r.State())
	}
	return strings.Join(out, " ")
}

func kinds(evs []Event) string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Machine+":"+string(e.Kind)+":"+e.State)
	}
	return strings.Join(out, " ")
}

func TestRowsFollowMachinesAndAgents(t *testing.T) {
	m := NewModel()
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{{Name: "p-10", State: "running"}, {Name: "p-2", State: "creating"}, {Name: "p-1", State: "running"}}})
	if got := states(m); got != "p-1=running p-2=creating p-10=running" {
		t.Fatalf("%s", got)
	}
	// The first snapshot is where things stand: no event.
	if evs := m.Apply(agent("p-1", session.Working, 0)); len(evs) != 0 {
		t.Fatalf("first look: %v", evs)
	}
	evs := m.Apply(agent("p-1", session.Waiting, 0))
	if kinds(evs) != "p-1:agent:waiting" || !evs[0].Notable() {
		t.Fatalf("waiting: %v", evs)
	}
	if evs := m.Apply(agent("p-1", session.Waiting, 0)); len(evs) != 0 {
		t.Fatalf("no change, no event: %v", evs)
	}
	evs = m.Apply(agent("p-1", session.Failed, 3))
	if kinds(evs) != "p-1:agent:failed" || *evs[0].ExitCode != 3 {
		t.Fatalf("failed: %+v", evs)
	}
	m.Apply(agent("p-10", session.Working, 0))
	if evs := m.Apply(agent("p-10", session.Succeeded, 0)); kinds(evs) != "p-10:agent:succeeded" || *evs[0].ExitCode != 0 {
		t.Fatalf("succeeded: %+v", evs)
	}
	if got := states(m); got != "p-1=failed (3) p-2=creating p-10=succeeded" {
		t.Fatalf("%s", got)
	}
	// A snapshot that could not be read keeps the last state and says why.
	m.Apply(AgentMsg{Fleet: "p", Machine: "p-10", Err: errors.New("connection lost\x1b[2J")})
	if r := m.Rows("p-10")[0]; r.State() != "succeeded" || strings.Contains(r.Err, "\x1b") || r.Err == "" {
		t.Fatalf("after an error: %+v", r)
	}
	if got := len(m.Rows("fail")); got != 1 {
		t.Errorf("filter by state: %d rows", got)
	}
}

func TestMachineDeathLosesItsAgent(t *testing.T) {
	m := NewModel()
	m.Apply(machines("running", "running"))
	m.Apply(agent("p-1", session.Working, 0))
	m.Apply(agent("p-2", session.Succeeded, 0))
	evs := m.Apply(machines("dead", "dead"))
	if kinds(evs) != "p-1:agent:lost" {
		t.Fatalf("%v", evs)
	}
	if got := states(m); got != "p-1=lost p-2=lost" {
		t.Fatalf("%s", got)
	}
	m.Apply(machines("suspended"))
	if got := states(m); got != "p-1=suspended" {
		t.Fatalf("a destroyed machine's row stays, or suspended shows wrong: %s", got)
	}
}

// A row's host memory is the last reading, gone once the machine stops.
func TestRowsCarryHostMemory(t *testing.T) {
	m := NewModel()
	mem := &vm.HostMemory{Unique: 61 << 20, Shared: 188 << 20}
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{{Name: "p-1", State: "running", Memory: mem}}})
	if r := m.Rows("")[0]; r.Memory == nil || *r.Memory != *mem {
		t.Fatalf("first reading: %+v", r.Memory)
	}
	more := &vm.HostMemory{Unique: 70 << 20, Shared: 188 << 20}
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{{Name: "p-1", State: "running", Memory: more}}})
	if r := m.Rows("")[0]; r.Memory == nil || r.Memory.Unique != 70<<20 {
		t.Fatalf("next reading: %+v", r.Memory)
	}
	m.Apply(MachinesMsg{At: t0, Fleet: "p", Machines: []fleet.MachineStatus{{Name: "p-1", State: "suspended"}}})
	if r := m.Rows("")[0]; r.Memory != nil {
		t.Fatalf("a suspended machine holds %+v", r.Memory)
	}
}

func TestRefusalsAreShownAndAnnouncedOnce(t *testing.T) {
	m := NewModel()
	m.Apply(machines("running"))
	deny := func(at time.Duration, host string, port int, old bool) []Event {
		return m.Apply(DecisionMsg{Fleet: "p", Machine: "p-1", Old: old,
			Entry: egress.Entry{Time: t0.Add(at), Proxy: "egress", Verdict: "deny", Host: host, Port: port, Reason: "not in the allowlist"}})
	}
	if evs := deny(-time.Hour, "old.example", 443, true); len(evs) != 0 {
		t.Fatalf("an old refusal announced: %v", evs)
	}
	evs := deny(0, "github.com", 443, false)
	if len(evs) != 1 || evs[0].Kind != "egress_denied" || evs[0].Host != "github.com" || !evs[0].Notable() {
		t.Fatalf("%+v", evs)
	}
	// An agent retrying in a loop is one event per quiet period.
	for i := 1; i < 100; i++ {
		if evs := deny(time.Duration(i)*100*time.Millisecond, "github.com", 443, false); len(evs) != 0 {
			t.Fatalf("retry %d announced", i)
		}
	}
	if evs := deny(RefusalQuiet+time.Minute, "github.com", 443, false); len(evs) != 1 {
		t.Fatal("a refusal after the quiet period was not announced")
	}
	r := m.Rows("")[0]
	f, ok := r.PendingRefusal()
	if !ok || f.Host != "github.com" || f.Count != 101 || len(r.Refusals) != 2 {
		t.Fatalf("%+v", r.Refusals)
	}
	m.Apply(AllowedMsg{Fleet: "p", Machine: "p-1", Pattern: "github.com"})
	if f, ok := m.Rows("")[0].PendingRefusal(); !ok || f.Host != "old.example" {
		t.Fatalf("after allowing: %+v %v", f, ok)
	}
	deny(RefusalQuiet+2*time.Minute, "registry.npmjs.org", 80, false)
	if f, _ := m.Rows("")[0].PendingRefusal(); fleet.RefusedPattern(f.Host, f.Port) != "registry.npmjs.org:80" {
		t.Fatalf("pattern for port 80: %+v", f)
	}
	// A flood of distinct hosts keeps a bounded list.
	for i := 0; i < 1000; i++ {
		deny(time.Hour+time.Duration(i)*time.Second, fmt.Sprintf("h%d.example\x1b[2J", i), 443, false)
	}
	rs := m.Rows("")[0].Refusals
	if len(rs) != maxRefusals || strings.Contains(rs[0].Host, "\x1b") {
		t.Fatalf("%d refusals, newest %q", len(rs), rs[0].Host)
	}
}

// A guest looping over new names grows the cockpit's memory of what it
// announced no further than its bound, and a retry of a recent name is
// still held back.
func TestAnnouncementsStayBoundedUnderAFloodOfNames(t *testing.T) {
	m := NewModel()
	m.Apply(machines("running"))
	deny := func(at time.Duration, host string) []Event {
		return m.Apply(DecisionMsg{Fleet: "p", Machine: "p-1",
			Entry: egress.Entry{Time: t0.Add(at), Proxy: "egress", Verdict: "deny", Host: host, Port: 443, Reason: "not in the allowlist"}})
	}
	for i := 0; i < 50000; i++ {
		deny(time.Duration(i)*time.Microsecond, fmt.Sprintf("n%d.test", i))
		if len(m.announced) > maxAnnounced+1 {
			t.Fatalf("%d announcements kept after %d names", len(m.announced), i+1)
		}
	}
	if evs := deny(time.Second, "n49999.test"); len(evs) != 0 {
		t.Fatal("a retry of the newest name was announced again")
	}
	// Past the quiet time the old ones go at the next flood.
	for i := 0; i <= maxAnnounced; i++ {
		deny(RefusalQuiet+2*time.Second+time.Duration(i)*time.Microsecond, fmt.Sprintf("m%d.test", i))
	}
	if len(m.announced) > maxAnnounced/2+2 {
		t.Errorf("%d announcements kept past their quiet time", len(m.announced))
	}
}

func TestBudgetReachedIsOneEvent(t *testing.T) {
	m := NewModel()
	msg := machines("running")
	m.Apply(msg)
	budget := func(at time.Duration) []Event {
		return m.Apply(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0.Add(at), Proxy: "credentials", Verdict: "deny", Reason: egress.BudgetReason + ": 5 of its 4-token budget used"}})
	}
	if evs := budget(0); kinds(evs) != "p-1:budget_reached:" {
		t.Fatalf("%v", evs)
	}
	if evs := budget(time.Second); len(evs) != 0 {
		t.Fatal("a second refused call announced again")
	}
	// The next poll sees the spend past its cap: no second event.
	msg.Machines[0].Spend = &fleet.Spend{Reached: true}
	msg.At = t0.Add(2 * time.Second)
	if evs := m.Apply(msg); len(evs) != 0 {
		t.Fatalf("the poll after the log announced again: %v", evs)
	}
	// Raised, then reached again later: a new event, from the poll alone.
	msg.Machines[0].Spend = &fleet.Spend{}
	msg.At = t0.Add(time.Hour)
	m.Apply(msg)
	msg.Machines[0].Spend = &fleet.Spend{Reached: true}
	msg.At = t0.Add(2 * time.Hour)
	if evs := m.Apply(msg); kinds(evs) != "p-1:budget_reached:" {
		t.Fatalf("reached again: %v", evs)
	}
	// Other credential refusals (a wrong token) are not budget events.
	if evs := m.Apply(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: egress.Entry{Time: t0, Proxy: "credentials", Verdict: "deny", Reason: "wrong or missing fleet token"}}); len(evs) != 0 {
		t.Fatalf("%v", evs)
	}
}

func TestSnapshotEvents(t *testing.T) {
	m := NewModel()
	m.Apply(machines("running", "stopped"))
	m.Apply(agent("p-1", session.Failed, 2))
	evs := m.Snapshot(t0)
	b, _ := json.Marshal(evs)
	if got := string(b); !strings.Contains(got, `"machine":"p-1","kind":"agent","state":"failed","exit_code":2`) || !strings.Contains(got, `"machine":"p-2","kind":"agent","state":"stopped"`) {
		t.Fatalf("%s", got)
	}
}

type recordRunner struct {
	mu   sync.Mutex
	cmds []execx.Cmd
	in   []string
}

func (r *recordRunner) Run(_ context.Context, c execx.Cmd) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, c)
	if c.Stdin != nil {
		var b bytes.Buffer
		b.ReadFrom(c.Stdin)
		r.in = append(r.in, b.String())
	}
	return nil, nil
}

func TestNotifier(t *testing.T) {
	code := 3
	ev := Event{Time: t0, Fleet: "p", Machine: "p-1", Kind: "agent", State: "failed", ExitCode: &code, Message: `"; rm -rf ~ #`}
	for _, tc := range []struct {
		goos, have, want string
	}{
		{"linux", "notify-send", "notify-send --app-name=fleet -- 'fleet: p-1' 'p-1: failed (exit 3): &quot;; rm -rf ~ #'"}, // the body is markup
		{"darwin", "osascript", "osascript -e 'on run argv' -e 'display notification (item 2 of argv) with title (item 1 of argv)' -e 'end run' 'fleet: p-1' 'p-1: failed (exit 3): \"; rm -rf ~ #'"},
		{"linux", "", ""},
		{"darwin", "notify-send", ""},
	} {
		r := &recordRunner{}
		var bell bytes.Buffer
		n := &Notifier{Bell: &bell, Desktop: true, Command: "cat > /tmp/x", Runner: r, GOOS: tc.goos,
			LookPath: func(p string) (string, error) {
				if p == tc.have {
					return "/usr/bin/" + p, nil
				}
				return "", errors.New("not found")
			}}
		n.Notify(ev)
		n.Notify(Event{Machine: "p-1", Kind: "agent", State: "working"}) // not notable
		n.Wait()
		var got []string
		for _, c := range r.cmds {
			if c.Name != "sh" {
				got = append(got, c.String())
			}
		}
		if strings.Join(got, "") != tc.want {
			t.Errorf("%s with %q: %v, want %q", tc.goos, tc.have, got, tc.want)
		}
		if bell.String() != "\a" {
			t.Errorf("bell %q", bell.String())
		}
		var back Event
		if len(r.in) != 1 || json.Unmarshal([]byte(r.in[0]), &back) != nil || back.Machine != "p-1" || back.State != "failed" || *back.ExitCode != 3 {
			t.Errorf("notify command got %q", r.in)
		}
	}
}
