package cockpit

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
)

// Feed observes fleets and sends the model's messages: each fleet's
// machines from the host every Poll, one agent watch per running machine
// on its kept SSH connection, and each machine's proxy refusals from its
// audit log as they are written.
type Feed struct {
	Controllers []*fleet.Controller
	Send        func(msg any) // called from many goroutines
	Poll        time.Duration // default one second
	// AuditPoll is how often audit logs are read (default 200ms).
	AuditPoll time.Duration
}

// Run observes until ctx ends.
func (f *Feed) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range f.Controllers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.fleet(ctx, c)
		}()
	}
	wg.Wait()
}

type watcher struct {
	cancel  context.CancelFunc
	started time.Time
}

func (f *Feed) fleet(ctx context.Context, c *fleet.Controller) {
	poll, auditPoll := f.Poll, f.AuditPoll
	if poll <= 0 {
		poll = time.Second
	}
	if auditPoll <= 0 {
		auditPoll = 200 * time.Millisecond
	}
	began := time.Now()
	agents := map[string]watcher{}
	audits := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		for _, w := range agents {
			w.cancel()
		}
		for _, cancel := range audits {
			cancel()
		}
		wg.Wait()
	}()
	for {
		if ms, err := c.Machines(ctx); err == nil {
			f.Send(MachinesMsg{At: time.Now(), Fleet: c.Fleet, Machines: ms})
			f.follow(ctx, c, ms, agents, audits, &wg, began, auditPoll)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
	}
}

// follow starts a watch for each machine that runs and stops those of
// machines that do not; likewise an audit tail per machine.
func (f *Feed) follow(ctx context.Context, c *fleet.Controller, ms []fleet.MachineStatus, agents map[string]watcher,
	audits map[string]context.CancelFunc, wg *sync.WaitGroup, began time.Time, auditPoll time.Duration) {
	s, err := c.Store().Load()
	if err != nil {
		return
	}
	running := map[string]bool{}
	for _, st := range ms {
		running[st.Name] = st.State == fleet.StateRunning
	}
	for _, m := range s.Machines {
		if _, ok := audits[m.Name]; !ok {
			actx, cancel := context.WithCancel(ctx)
			audits[m.Name] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.tailAudit(actx, c.Fleet, m, began, auditPoll)
			}()
		}
		w, watching := agents[m.Name]
		if watching && (!running[m.Name] || !w.started.Equal(m.StartedAt)) {
			w.cancel()
			delete(agents, m.Name)
			watching = false
		}
		if !watching && running[m.Name] && m.SSHAddr != "" {
			wctx, cancel := context.WithCancel(ctx)
			agents[m.Name] = watcher{cancel: cancel, started: m.StartedAt}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Sessions().WatchAgent(wctx, m, func(st session.Status, err error) {
					if wctx.Err() == nil {
						f.Send(AgentMsg{At: time.Now(), Fleet: c.Fleet, Machine: m.Name, Status: st, Err: err})
					}
				})
			}()
		}
	}
	for name, cancel := range audits {
		if s.Find(name) == nil {
			cancel()
			delete(audits, name)
			if w, ok := agents[name]; ok {
				w.cancel()
				delete(agents, name)
			}
		}
	}
}

func (f *Feed) tailAudit(ctx context.Context, fleetName string, m *fleet.Machine, began time.Time, poll time.Duration) {
	egress.Tail(ctx, m.Dir, true, poll, func(line []byte) error {
		return egress.ReadEntries(bytes.NewReader(line), func(e egress.Entry) {
			if e.Refused() {
				f.Send(DecisionMsg{Fleet: fleetName, Machine: m.Name, Entry: e, Old: e.Time.Before(began)})
			}
		})
	})
}
