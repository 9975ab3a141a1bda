// Package cockpit is fleet top and fleet events: a pure model that takes
// what is observed (machine states from the host, agent snapshots from
// the guests, proxy decisions from the audit logs) and gives rows to draw
// and events to tell the user about, a feed that observes, and the
// terminal UI. The model never does I/O, so it is tested as state
// transitions: messages in, rows and events out.
package cockpit

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// MachinesMsg is the host's view of the fleets' machines (no SSH).
type MachinesMsg struct {
	At       time.Time
	Fleet    string
	Machines []fleet.MachineStatus
}

// AgentMsg is one snapshot of a machine's agent, or why none came.
type AgentMsg struct {
	At      time.Time
	Fleet   string
	Machine string
	Status  session.Status
	Err     error
}

// DecisionMsg is one refusal from a machine's proxies. Old ones were in
// the log before the cockpit started: shown, never announced.
type DecisionMsg struct {
	Fleet   string
	Machine string
	Entry   egress.Entry
	Old     bool
}

// Refusal is a host a machine's agent tried and was refused.
type Refusal struct {
	Host   string `json:"host"`
	Port   int    `json:"port,omitempty"`
	Reason string `json:"reason"`
	Count  int    `json:"count"`
	// Allowable: allowing the host would let the next try through (not
	// a private address, a failed lookup or a broken tunnel).
	Allowable bool      `json:"allowable"`
	Last      time.Time `json:"last"`
	Allowed   bool      `json:"allowed,omitempty"` // allowed since, from the cockpit
}

// Row is one machine as the cockpit shows it.
type Row struct {
	Fleet   string
	Name    string
	Machine string          // the host's state: running, stopped, suspended, dead, creating, booting...
	Parked  string          // why the idle parker suspended it ("": it did not)
	ForkOf  string          // the machine it was forked from ("": none)
	Tree    string          // its fork tree's prefix in the rows ("└ "; "" at the top level)
	Agent   *session.Status // nil until the first snapshot
	AgentAt time.Time       // when the agent's state last changed
	Err     string          // why the agent cannot be read
	Spend   *fleet.Spend
	// Memory is the host memory its hypervisor holds, while it runs.
	Memory *vm.HostMemory
	// Refusals, newest first, at most maxRefusals.
	Refusals []Refusal
}

const maxRefusals = 5

// State is the row's one word: the machine's while it is not running,
// else its agent's.
func (r Row) State() string {
	switch {
	case r.Machine == fleet.StateDead:
		return "lost"
	case r.Machine == fleet.StateSuspended && r.Parked != "":
		return "parked" // its keys resume it
	case r.Machine != fleet.StateRunning:
		return r.Machine
	case r.Agent == nil:
		return fleet.StateRunning // its agent not read yet
	case r.Agent.State == session.Failed:
		return fmt.Sprintf("failed (%d)", r.Agent.ExitCode)
	}
	return string(r.Agent.State)
}

// PendingRefusal is the newest refusal not yet allowed, if any.
func (r Row) PendingRefusal() (Refusal, bool) {
	for _, f := range r.Refusals {
		if !f.Allowed && f.Host != "" {
			return f, true
		}
	}
	return Refusal{}, false
}

// Model is the cockpit's state.
type Model struct {
	rows map[string]*Row // by fleet/name
	// announced says when a refusal of a host was last an event, so an
	// agent retrying in a loop is one notification, not hundreds.
	announced map[string]time.Time
}

// NewModel is an empty cockpit.
func NewModel() *Model {
	return &Model{rows: map[string]*Row{}, announced: map[string]time.Time{}}
}

// RefusalQuiet is how long a refusal of the same host by the same machine
// stays one event.
const RefusalQuiet = 30 * time.Second

func key(fleetName, name string) string { return fleetName + "/" + name }

// Apply takes one message and returns the events it makes.
func (m *Model) Apply(msg any) []Event {
	switch msg := msg.(type) {
	case MachinesMsg:
		return m.machines(msg)
	case AgentMsg:
		return m.agent(msg)
	case DecisionMsg:
		return m.decision(msg)
	case AllowedMsg:
		if r := m.rows[key(msg.Fleet, msg.Machine)]; r != nil {
			for i := range r.Refusals {
				if fleet.RefusedPattern(r.Refusals[i].Host, r.Refusals[i].Port) == msg.Pattern {
					r.Refusals[i].Allowed = true
				}
			}
		}
	}
	return nil
}

// AllowedMsg says the user allowed a refused host for a machine.
type AllowedMsg struct{ Fleet, Machine, Pattern string }

func (m *Model) machines(msg MachinesMsg) []Event {
	var evs []Event
	seen := map[string]bool{}
	for _, ms := range msg.Machines {
		k := key(msg.Fleet, ms.Name)
		seen[k] = true
		r := m.rows[k]
		if r == nil {
			r = &Row{Fleet: msg.Fleet, Name: ms.Name, Machine: ms.State, Parked: ms.SuspendReason, Spend: ms.Spend, ForkOf: ms.ForkOf, Memory: ms.Memory}
			m.rows[k] = r
			continue
		}
		was := r.Machine
		r.Machine, r.Parked, r.ForkOf = ms.State, ms.SuspendReason, ms.ForkOf
		wasReached := r.Spend != nil && r.Spend.Reached
		r.Spend, r.Memory = ms.Spend, ms.Memory
		// A machine that died under a live agent lost it.
		if ms.State == fleet.StateDead && was != fleet.StateDead && r.Agent != nil && r.Agent.State.Live() {
			r.Agent = &session.Status{State: session.Lost}
			r.AgentAt = msg.At
			evs = append(evs, AgentEvent(msg.At, msg.Fleet, ms.Name, session.Status{State: session.Lost, Message: "its machine's hypervisor process is gone"}))
		}
		if ms.State != fleet.StateRunning && ms.State != fleet.StateDead {
			r.Agent = nil // asked again once it runs
		}
		if r.Spend != nil && r.Spend.Reached && !wasReached {
			// The audit log usually said so first.
			if last, ok := m.announced[k+" budget"]; !ok || msg.At.Sub(last) >= RefusalQuiet {
				evs = append(evs, m.budget(msg.At, msg.Fleet, ms.Name))
			}
		}
	}
	for k, r := range m.rows {
		if r.Fleet == msg.Fleet && !seen[k] {
			delete(m.rows, k) // destroyed
		}
	}
	return evs
}

func (m *Model) budget(at time.Time, fleetName, name string) Event {
	m.announced[key(fleetName, name)+" budget"] = at
	return Event{Time: at, Fleet: fleetName, Machine: name, Kind: KindBudgetReached,
		Message: "the credential proxy refuses its next model call (fleet net budget " + name + " +N raises it)"}
}

func (m *Model) agent(msg AgentMsg) []Event {
	r := m.rows[key(msg.Fleet, msg.Machine)]
	if r == nil {
		return nil
	}
	if msg.Err != nil {
		r.Err = session.Clean(msg.Err.Error(), 200)
		return nil
	}
	r.Err = ""
	st := msg.Status
	prev := r.Agent
	r.Agent = &st
	if prev == nil {
		r.AgentAt = msg.At
		return nil // the first look is where things stand, not a change
	}
	if prev.State == st.State {
		return nil
	}
	r.AgentAt = msg.At
	if st.State == session.Idle {
		return nil // a session cleared for the next task
	}
	return []Event{AgentEvent(msg.At, msg.Fleet, msg.Machine, st)}
}

func (m *Model) decision(msg DecisionMsg) []Event {
	r := m.rows[key(msg.Fleet, msg.Machine)]
	e := msg.Entry
	ev, ok := AuditEvent(msg.Fleet, msg.Machine, e)
	if r == nil || !ok {
		return nil
	}
	if ev.Kind == KindBudgetReached {
		if msg.Old {
			return nil
		}
		k := key(msg.Fleet, msg.Machine) + " budget"
		if last, ok := m.announced[k]; ok && e.Time.Sub(last) < RefusalQuiet {
			return nil
		}
		return []Event{m.budget(e.Time, msg.Fleet, msg.Machine)}
	}
	host, reason := ev.Host, ev.Message
	found := -1
	for i, f := range r.Refusals {
		if f.Host == host && f.Port == e.Port {
			found = i
		}
	}
	if found >= 0 {
		f := r.Refusals[found]
		r.Refusals = append(r.Refusals[:found], r.Refusals[found+1:]...)
		f.Count++
		f.Last, f.Reason, f.Allowable = e.Time, reason, e.Allowable()
		if !msg.Old {
			f.Allowed = false // refused again: the allow did not cover it
		}
		r.Refusals = append([]Refusal{f}, r.Refusals...)
	} else {
		r.Refusals = append([]Refusal{{Host: host, Port: e.Port, Reason: reason, Count: 1, Last: e.Time, Allowable: e.Allowable()}}, r.Refusals...)
	}
	if len(r.Refusals) > maxRefusals {
		r.Refusals = r.Refusals[:maxRefusals]
	}
	if msg.Old {
		return nil
	}
	k := fmt.Sprintf("%s deny %s:%d", key(msg.Fleet, msg.Machine), host, e.Port)
	if last, ok := m.announced[k]; ok && e.Time.Sub(last) < RefusalQuiet {
		return nil
	}
	m.announced[k] = e.Time
	m.forgetAnnounced(e.Time, k)
	return []Event{ev}
}

// maxAnnounced bounds the announcements kept: a guest names the hosts,
// so a loop over new names would grow the map without end.
const maxAnnounced = 4096

// forgetAnnounced drops, once there are too many, the announcements whose
// quiet time has passed by now (they no longer hold anything back); if
// that is not enough, every one but newest's.
func (m *Model) forgetAnnounced(now time.Time, newest string) {
	if len(m.announced) <= maxAnnounced {
		return
	}
	for k, at := range m.announced {
		if now.Sub(at) >= RefusalQuiet {
			delete(m.announced, k)
		}
	}
	if len(m.announced) > maxAnnounced/2 {
		m.announced = map[string]time.Time{newest: m.announced[newest]}
	}
}

// Rows are the machines in name order, each fork right after the
// machine it was forked from, those matching filter only (a substring
// of the name or the state; "" matches all).
func (m *Model) Rows(filter string) []Row {
	var out []Row
	for _, r := range m.rows {
		if filter == "" || strings.Contains(r.Name, filter) || strings.Contains(r.State(), filter) {
			out = append(out, *r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Fleet != out[j].Fleet {
			return out[i].Fleet < out[j].Fleet
		}
		return natLess(out[i].Name, out[j].Name)
	})
	return forkTree(out)
}

// Snapshot is the current state of every machine as events, for fleet
// events without --follow.
func (m *Model) Snapshot(at time.Time) []Event {
	var out []Event
	for _, r := range m.Rows("") {
		ev := Event{Time: at, Fleet: r.Fleet, Machine: r.Name, Kind: KindAgent, State: r.State()}
		if r.Agent != nil {
			ev = AgentEvent(at, r.Fleet, r.Name, *r.Agent)
		}
		out = append(out, ev)
	}
	return out
}

// natLess orders names with numbers by value: ag-2 before ag-10.
func natLess(a, b string) bool {
	pa, na := splitNum(a)
	pb, nb := splitNum(b)
	if pa != pb || na < 0 || nb < 0 {
		return a < b
	}
	return na < nb
}

func splitNum(s string) (string, int) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	if i == len(s) || len(s)-i > 9 {
		return s, -1
	}
	n := 0
	for _, c := range s[i:] {
		n = n*10 + int(c-'0')
	}
	return s[:i], n
}
