package cockpit

import (
	"testing"

	"github.com/agentfleet/agentfleet/fleet"
)

// A machine the idle parker suspended reads "parked", a user's suspend
// "suspended"; resumed, it is its agent's again.
func TestParkedRows(t *testing.T) {
	m := NewModel()
	msg := machines(fleet.StateSuspended, fleet.StateSuspended)
	msg.Machines[0].SuspendReason = "idle 15m: agent succeeded"
	m.Apply(msg)
	if got := states(m); got != "p-1=parked p-2=suspended" {
		t.Fatalf("%s", got)
	}
	m.Apply(msg) // the second look goes through the update path
	if got := states(m); got != "p-1=parked p-2=suspended" {
		t.Fatalf("again: %s", got)
	}
	m.Apply(machines(fleet.StateRunning, fleet.StateSuspended))
	if got := states(m); got != "p-1=running p-2=suspended" {
		t.Fatalf("resumed: %s", got)
	}
}
