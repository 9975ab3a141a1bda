package fleet

// When an idle agent's machine is parked: a pure decision over what the
// parker saw, poll by poll, so every odd sequence can be tested without a
// VM. The parker (park.go) feeds it and acts on its answer.

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/session"
)

// Bounds of idle_suspend: shorter than a few polls would park an agent
// between two of its own turns; longer than a month is a typo.
const (
	MinIdleSuspend = 10 * time.Second
	MaxIdleSuspend = 31 * 24 * time.Hour
)

// ParseIdleSuspend reads an idle_suspend value (fleet.hcl or
// --idle-suspend): a Go duration such as 15m or 1h30m; "0" or "off"
// turns parking off (0 returned).
func ParseIdleSuspend(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "0", "off":
		return 0, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < MinIdleSuspend || d > MaxIdleSuspend {
		return 0, fmt.Errorf("idle suspend %s is not a duration between %s and %s (examples: 15m, 1h; 0 or off: never)", strconv.Quote(s), MinIdleSuspend, "31 days")
	}
	return d.Round(time.Second), nil
}

// parksOn are the agent states that wait for a person: parking them
// loses nothing. Idle (no session ever ran: a machine used by hand, as
// after fleet up) and lost (fleet cannot tell what happened) are not.
func parksOn(s session.State) bool {
	return s == session.Waiting || s == session.Succeeded || s == session.Failed
}

// idleWatch is one machine's idle streak, as one parker saw it.
type idleWatch struct {
	after time.Duration // the machine's idle_suspend
	since time.Time     // when the streak began; zero: none
	last  time.Time     // the last observation's time
	mark  string        // what the agent showed when the streak began
}

// observe records one poll of the agent at now (err: it could not be
// read) and says whether the machine is to be parked now, and the agent
// state it is parked for.
//
// A poll that fails, shows the agent working or shows anything new (a
// turn, a tool, a line of output: it worked between two polls) ends the
// streak. So does time going backwards: only a streak seen to last
// counts.
func (w *idleWatch) observe(now time.Time, st session.Status, err error) (park bool) {
	defer func() { w.last = now }()
	if err != nil || !parksOn(st.State) || (!w.last.IsZero() && now.Before(w.last)) {
		w.since, w.mark = time.Time{}, ""
		return false
	}
	mark := activity(st)
	if w.since.IsZero() || mark != w.mark {
		w.since, w.mark = now, mark
	}
	return w.after > 0 && now.Sub(w.since) >= w.after
}

// activity is what changes in a status when the agent did something:
// not its elapsed time, which grows while it waits.
func activity(st session.Status) string {
	return fmt.Sprintf("%s|%d|%d|%q|%q|%q", st.State, st.ExitCode, st.Turns, st.Tool, st.Message, st.LastLine)
}

// ParkReason is the reason a parked machine's record and fleet ls give,
// e.g. "idle 15m: agent succeeded".
func ParkReason(after time.Duration, st session.State) string {
	return "idle " + shortDuration(after) + ": agent " + string(st)
}

// shortDuration is d without Go's trailing zero units (15m, not 15m0s).
func shortDuration(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
