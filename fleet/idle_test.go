package fleet

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/internal/session"
)

func TestParseIdleSuspend(t *testing.T) {
	good := map[string]time.Duration{
		"15m": 15 * time.Minute, "1h30m": 90 * time.Minute, " 20s ": 20 * time.Second,
		"0": 0, "off": 0, "OFF": 0, "10s": 10 * time.Second, "744h": 744 * time.Hour,
		"1m0.4s": time.Minute,
	}
	for in, want := range good {
		got, err := ParseIdleSuspend(in)
		if err != nil || got != want {
			t.Errorf("%q: got %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "15", "-5m", "9s", "1ms", "745h", "9999999999h", "15 m", "fifteen", "0s5", "on", "0x10", "15m\n\x1b[2J", "NaN"} {
		if d, err := ParseIdleSuspend(in); err == nil {
			t.Errorf("%q: accepted as %v", in, d)
		}
	}
}

func TestShortDurationAndReason(t *testing.T) {
	for d, want := range map[time.Duration]string{15 * time.Minute: "15m", time.Hour: "1h", 90 * time.Minute: "1h30m", 45 * time.Second: "45s", 61 * time.Second: "1m1s", 2*time.Hour + 30*time.Second: "2h0m30s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
	if got := ParkReason(15*time.Minute, session.Succeeded); got != "idle 15m: agent succeeded" {
		t.Errorf("reason %q", got)
	}
}

// obs is one poll: seconds after t0, what the agent showed (or an error).
type obs struct {
	at    int
	state session.State
	err   bool
	line  string
}

func TestIdleWatchDecides(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name string
		seq  []obs
		park int // index of the first poll that parks; -1: never
	}{
		{"succeeded long enough", []obs{{0, session.Succeeded, false, ""}, {30, session.Succeeded, false, ""}, {60, session.Succeeded, false, ""}}, 2},
		{"failed too", []obs{{0, session.Failed, false, ""}, {60, session.Failed, false, ""}}, 1},
		{"waiting too", []obs{{0, session.Waiting, false, "?"}, {61, session.Waiting, false, "?"}}, 1},
		{"one poll is no streak", []obs{{600, session.Succeeded, false, ""}}, -1},
		{"not yet", []obs{{0, session.Waiting, false, ""}, {59, session.Waiting, false, ""}}, -1},
		{"working resets", []obs{{0, session.Waiting, false, ""}, {40, session.Working, false, ""}, {70, session.Waiting, false, ""}, {100, session.Waiting, false, ""}, {130, session.Waiting, false, ""}}, 4},
		{"never idle", []obs{{0, session.Working, false, ""}, {600, session.Working, false, ""}}, -1},
		{"no session never parks", []obs{{0, session.Idle, false, ""}, {3600, session.Idle, false, ""}}, -1},
		{"lost never parks", []obs{{0, session.Lost, false, ""}, {3600, session.Lost, false, ""}}, -1},
		{"unknown state never parks", []obs{{0, "zombie", false, ""}, {3600, "zombie", false, ""}}, -1},
		{"an error never parks", []obs{{0, session.Succeeded, true, ""}, {3600, session.Succeeded, true, ""}}, -1},
		{"an error ends the streak", []obs{{0, session.Succeeded, false, ""}, {50, "", true, ""}, {70, session.Succeeded, false, ""}, {100, session.Succeeded, false, ""}, {130, session.Succeeded, false, ""}}, 4},
		{"work between polls resets", []obs{{0, session.Waiting, false, "a"}, {40, session.Waiting, false, "b"}, {70, session.Waiting, false, "b"}, {100, session.Waiting, false, "b"}}, 3},
		{"waiting then done is new", []obs{{0, session.Waiting, false, ""}, {40, session.Succeeded, false, ""}, {99, session.Succeeded, false, ""}, {100, session.Succeeded, false, ""}}, 3},
		{"clock backwards resets", []obs{{0, session.Succeeded, false, ""}, {-3600, session.Succeeded, false, ""}, {-3590, session.Succeeded, false, ""}, {-3530, session.Succeeded, false, ""}}, 3},
		{"clock jumps forward parks once seen twice", []obs{{0, session.Succeeded, false, ""}, {86400, session.Succeeded, false, ""}}, 1},
	}
	for _, tc := range cases {
		w := &idleWatch{after: time.Minute}
		first := -1
		for i, o := range tc.seq {
			var err error
			if o.err {
				err = errors.New("ssh: handshake failed")
			}
			if w.observe(t0.Add(time.Duration(o.at)*time.Second), session.Status{State: o.state, LastLine: o.line}, err) && first < 0 {
				first = i
			}
		}
		if first != tc.park {
			t.Errorf("%s: parks at poll %d, want %d", tc.name, first, tc.park)
		}
	}
}

func TestIdleWatchWithoutThresholdNeverParks(t *testing.T) {
	w := &idleWatch{}
	t0 := time.Now()
	for i := 0; i < 5; i++ {
		if w.observe(t0.Add(time.Duration(i)*time.Hour), session.Status{State: session.Succeeded}, nil) {
			t.Fatal("parked with no idle_suspend")
		}
	}
}

// --idle-suspend wins over fleet.hcl's idle_suspend; "off" turns off
// what fleet.hcl turned on; a bad value in fleet.hcl fails its load.
func TestIdleSuspendFlagOverProject(t *testing.T) {
	p := Project{IdleSuspend: "15m"}
	for flag, want := range map[string]time.Duration{"": 15 * time.Minute, "1h": time.Hour, "off": 0, "0": 0} {
		if got, err := p.IdleSuspendFor(flag); err != nil || got != want {
			t.Errorf("flag %q over 15m: %v %v, want %v", flag, got, err, want)
		}
	}
	if got, err := (Project{}).IdleSuspendFor(""); err != nil || got != 0 {
		t.Errorf("neither: %v %v", got, err)
	}
	if _, err := p.IdleSuspendFor("5"); err == nil || !strings.Contains(err.Error(), "--idle-suspend") {
		t.Errorf("bad flag: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte("idle_suspend = \"soon\"\n"), 0o644)
	if _, err := LoadProject(dir); err == nil || !strings.Contains(err.Error(), "idle_suspend") {
		t.Errorf("bad fleet.hcl: %v", err)
	}
	os.WriteFile(filepath.Join(dir, ProjectFile), []byte("idle_suspend = \"20m\"\n"), 0o644)
	if p, err := LoadProject(dir); err != nil || p.IdleSuspend != "20m" {
		t.Errorf("fleet.hcl 20m: %+v %v", p, err)
	}
}
