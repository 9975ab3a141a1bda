package cockpit

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// Kind is what an event is about. Its words are what fleet events
// prints and what notify commands and scripts read (the JSON "kind").
type Kind string

const (
	// KindAgent: an agent's state changed (working, waiting, succeeded,
	// failed, lost).
	KindAgent Kind = "agent"
	// KindEgressDenied: the egress proxy refused a host.
	KindEgressDenied Kind = "egress_denied"
	// KindBudgetReached: the credential proxy refused a call past the
	// machine's budget.
	KindBudgetReached Kind = "budget_reached"
)

// Event is what fleet events prints and notifications carry.
type Event struct {
	Time     time.Time `json:"time"`
	Fleet    string    `json:"fleet"`
	Machine  string    `json:"machine"`
	Kind     Kind      `json:"kind"`
	State    string    `json:"state,omitempty"` // agent: working, waiting, succeeded, failed, lost
	ExitCode *int      `json:"exit_code,omitempty"`
	Message  string    `json:"message,omitempty"`
	Host     string    `json:"host,omitempty"`
	Port     int       `json:"port,omitempty"`
	// Folded is how many events about the machine this notification
	// stands for besides itself (notifications are one per machine per
	// NotifyQuiet).
	Folded int `json:"folded,omitempty"`
}

// Notable says the user is told (bell, desktop, notify command): an
// agent ended or waits, or a proxy refused something.
func (e Event) Notable() bool {
	if e.Kind != KindAgent {
		return true
	}
	switch session.State(e.State) {
	case session.Waiting, session.Succeeded, session.Failed, session.Lost:
		return true
	}
	return false
}

// Text is the event in one line, for the bell's title and fleet events.
func (e Event) Text() string {
	var s string
	switch e.Kind {
	case KindAgent:
		s = e.Machine + ": " + e.State
		if e.ExitCode != nil && e.State == string(session.Failed) {
			s += fmt.Sprintf(" (exit %d)", *e.ExitCode)
		}
	case KindEgressDenied:
		s = fmt.Sprintf("%s: denied %s", e.Machine, fleet.RefusedPattern(e.Host, e.Port))
	case KindBudgetReached:
		s = e.Machine + ": budget reached"
	default:
		s = e.Machine + ": " + string(e.Kind)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Folded > 0 {
		s += fmt.Sprintf(" (and %d more)", e.Folded)
	}
	return termsafe.Line(s)
}

// AgentEvent is the event of an agent in state st: its exit code once it
// ended.
func AgentEvent(at time.Time, fleetName, machine string, st session.Status) Event {
	ev := Event{Time: at, Fleet: fleetName, Machine: machine, Kind: KindAgent, State: string(st.State), Message: st.Message}
	if st.State == session.Succeeded || st.State == session.Failed {
		code := st.ExitCode
		ev.ExitCode = &code
	}
	return ev
}

// AuditEvent is the event one audit log entry makes, if any: a refused
// host, or a call refused at the budget. Other refusals of the credential
// proxy (a bad token, a path it does not forward) and every allowed
// connection make none. The entry's strings came through the guest, so
// they are cleaned and cut here, once.
func AuditEvent(fleetName, machine string, e egress.Entry) (Event, bool) {
	if !e.Refused() {
		return Event{}, false
	}
	ev := Event{Time: e.Time, Fleet: fleetName, Machine: machine, Message: session.Clean(e.Reason, 200)}
	switch {
	case e.BudgetReached():
		ev.Kind = KindBudgetReached
	case e.Proxy == egress.ProxyCredentials:
		return Event{}, false
	default:
		ev.Kind, ev.Host, ev.Port = KindEgressDenied, session.Clean(e.Host, 253), e.Port
	}
	return ev, true
}

// Current is where each machine's agent stands and the events its audit
// log holds, oldest first: fleet events without --follow.
func Current(ctx context.Context, cs []*fleet.Controller) ([]Event, error) {
	now := time.Now()
	var evs []Event
	for _, c := range cs {
		st, err := c.Status(ctx)
		if err != nil {
			return nil, err
		}
		m := NewModel()
		m.Apply(MachinesMsg{At: now, Fleet: c.Fleet, Machines: st})
		for _, ms := range st {
			if ms.Agent != nil {
				m.Apply(AgentMsg{At: now, Fleet: c.Fleet, Machine: ms.Name, Status: *ms.Agent})
			}
		}
		evs = append(evs, m.Snapshot(now)...)
		s, err := c.Store().Load()
		if err != nil {
			return nil, err
		}
		for _, mach := range s.Machines {
			err := egress.Tail(ctx, mach.Dir, false, 0, func(line []byte) error {
				return egress.ReadEntries(bytes.NewReader(line), func(e egress.Entry) {
					if ev, ok := AuditEvent(c.Fleet, mach.Name, e); ok {
						evs = append(evs, ev)
					}
				})
			})
			if err != nil {
				return nil, err
			}
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
	return evs, nil
}

// Follow runs the cockpit's feed and model without a screen, giving each
// event to fn until ctx ends or fn fails: fleet events --follow.
func Follow(ctx context.Context, cs []*fleet.Controller, fn func(Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs := make(chan any, 256)
	feed := &Feed{Controllers: cs, Send: func(m any) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); feed.Run(ctx) }()
	defer wg.Wait()
	model := NewModel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			for _, ev := range model.Apply(m) {
				if err := fn(ev); err != nil {
					cancel()
					return err
				}
			}
		}
	}
}
