package cockpit

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe/termsafetest"
)

// hostileAudit is a log a guest shaped: refusals of names full of
// terminal controls, the credential proxy's words in an egress host, a
// budget refusal, refusals that are no event, and allowed calls.
func hostileAudit(t0 time.Time) []egress.Entry {
	var es []egress.Entry
	for i, h := range termsafetest.Hostile {
		es = append(es, egress.Entry{Time: t0.Add(time.Duration(i) * time.Second), Proxy: egress.ProxyEgress, Verdict: egress.VerdictDeny,
			Host: fmt.Sprintf("h%d%s.test", i, h), Port: 443 + i, Reason: egress.ReasonNotAllowed + h})
	}
	n := time.Duration(len(es))
	return append(es,
		egress.Entry{Time: t0.Add(n * time.Second), Proxy: egress.ProxyEgress, Verdict: egress.VerdictDeny, Host: "budget.reached", Reason: egress.BudgetReason},
		egress.Entry{Time: t0.Add((n + 1) * time.Second), Proxy: egress.ProxyCredentials, Verdict: egress.VerdictDeny, Reason: egress.BudgetReason + ": 1000 of its 1000-token budget\x1b[2K"},
		egress.Entry{Time: t0.Add((n + 2) * time.Second), Proxy: egress.ProxyCredentials, Verdict: egress.VerdictDeny, Reason: "bad token"},
		egress.Entry{Time: t0.Add((n + 3) * time.Second), Proxy: egress.ProxyEgress, Verdict: egress.VerdictAllow, Host: "allowed.test"},
		egress.Entry{Time: t0.Add((n + 4) * time.Second), Proxy: egress.ProxyCredentials, Verdict: egress.VerdictAllow, Reason: egress.BudgetReason},
	)
}

func writeAudit(t *testing.T, dir string, es []egress.Entry) {
	t.Helper()
	var b strings.Builder
	for _, e := range es {
		line, _ := json.Marshal(e) // raw bytes in the strings, as a log from before cleaning
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(filepath.Join(dir, egress.AuditFile), []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fleet events without --follow (Current) and the cockpit's model read
// an audit log through the one mapping: the same events, of the same
// kinds, for the same hosts, and nothing raw in any of them.
func TestCurrentAndTheModelMapTheAuditLogAlike(t *testing.T) {
	c := newFakeFleet(t, t.TempDir(), "p", &fakeDriver{}, "p-1")
	s, _ := c.Store().Load()
	es := hostileAudit(time.Now().Add(-time.Hour).UTC().Truncate(time.Second))
	writeAudit(t, s.Machines[0].Dir, es)

	now, err := Current(context.Background(), nil)
	if err != nil || len(now) != 0 {
		t.Fatalf("no fleets: %v %v", now, err)
	}
	now, err = Current(context.Background(), []*fleet.Controller{c})
	if err != nil {
		t.Fatal(err)
	}
	m := NewModel()
	m.Apply(MachinesMsg{At: time.Now(), Fleet: "p", Machines: mustStatus(t, c)})
	// The model gets the entries as the feed does: read back from the log.
	f, err := os.Open(filepath.Join(s.Machines[0].Dir, egress.AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var logged []egress.Entry
	if err := egress.ReadEntries(f, func(e egress.Entry) { logged = append(logged, e) }); err != nil || len(logged) != len(es) {
		t.Fatalf("read back %d of %d entries: %v", len(logged), len(es), err)
	}
	var followed []Event
	for _, e := range logged {
		followed = append(followed, m.Apply(DecisionMsg{Fleet: "p", Machine: "p-1", Entry: e})...)
	}
	shape := func(evs []Event) string {
		var out []string
		for _, ev := range evs {
			if ev.Kind == KindAgent {
				continue // where the agent stands: not from the log
			}
			out = append(out, fmt.Sprintf("%s %s %q %d", ev.Machine, ev.Kind, ev.Host, ev.Port))
		}
		return strings.Join(out, "\n")
	}
	want := len(termsafetest.Hostile) + 2 // each refused host, "budget.reached" and one budget refusal
	if got := strings.Count(shape(now), "\n") + 1; got != want {
		t.Fatalf("fleet events made %d events from the log, want %d:\n%s", got, want, shape(now))
	}
	if shape(now) != shape(followed) {
		t.Errorf("fleet events and the cockpit disagree:\n%s\n---\n%s", shape(now), shape(followed))
	}
	for _, ev := range append(now, followed...) {
		b, _ := json.Marshal(ev)
		for _, s := range []string{ev.Text(), ev.Host, ev.Message, string(b)} {
			if c, raw := termsafetest.RawControl(s); raw {
				t.Errorf("%s event carries %q raw: %q", ev.Kind, c, s)
			}
		}
		if ev.Kind == KindEgressDenied && ev.Host == "budget.reached" {
			continue
		}
		if ev.Kind == KindBudgetReached && (ev.Host != "" || ev.Port != 0) {
			t.Errorf("a budget event names a host: %+v", ev)
		}
	}
}

func TestAgentEventCarriesTheExitCodeOnlyOnceItEnded(t *testing.T) {
	for _, st := range []session.State{session.Working, session.Waiting, session.Idle, session.Lost, session.Succeeded, session.Failed} {
		ev := AgentEvent(time.Now(), "p", "p-1", session.Status{State: st, ExitCode: 7, Message: "m"})
		ended := st == session.Succeeded || st == session.Failed
		if (ev.ExitCode != nil) != ended || (ended && *ev.ExitCode != 7) || ev.Kind != KindAgent || ev.State != string(st) || ev.Message != "m" {
			t.Errorf("%s: %+v", st, ev)
		}
	}
}

func mustStatus(t *testing.T, c *fleet.Controller) []fleet.MachineStatus {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}
