package slurm

import (
	"strings"
	"testing"
)

func TestStatesPartitionIntoClasses(t *testing.T) {
	want := map[Class][]State{
		ClassQueued:  {Pending, Configuring, Requeued, RequeueHold, RequeueFed, ResvDelHold, SpecialExit},
		ClassRunning: {Running, Resizing, Signaling},
		ClassHeld:    {Suspended, Stopped},
		ClassEnding:  {Completing, StageOut},
		ClassEnded:   {BootFail, Cancelled, Completed, Deadline, Failed, NodeFail, OutOfMemory, Preempted, Revoked, Timeout},
	}
	total := 0
	for class, list := range want {
		for _, s := range list {
			total++
			checks := map[Class]bool{
				ClassQueued: s.Queued(), ClassRunning: s.Running(), ClassHeld: s.Held(),
				ClassEnding: s.Ending(), ClassEnded: s.Ended(),
			}
			for c, got := range checks {
				if got != (c == class) {
					t.Errorf("%s: class %d check = %v, want it in class %d only", s, c, got, class)
				}
			}
		}
	}
	all := States()
	if total != len(all) || len(all) != len(states) || len(all) != 24 {
		t.Fatalf("%d states classified, States() has %d, the table %d; Slurm has 24", total, len(all), len(states))
	}
	seen := map[State]bool{}
	for _, s := range all {
		if seen[s] {
			t.Errorf("%s listed twice", s)
		}
		seen[s] = true
		if s.Class() == 0 {
			t.Errorf("%s has no class", s)
		}
	}
	var none State = "BOGUS"
	if none.Queued() || none.Running() || none.Held() || none.Ending() || none.Ended() || none.Class() != 0 {
		t.Error("an unknown state is in a class")
	}
}

func TestParseState(t *testing.T) {
	long := map[State]string{
		BootFail: "BF", Cancelled: "CA", Completed: "CD", Completing: "CG", Configuring: "CF",
		Deadline: "DL", Failed: "F", NodeFail: "NF", OutOfMemory: "OOM", Pending: "PD",
		Preempted: "PR", Running: "R", ResvDelHold: "RD", RequeueFed: "RF", RequeueHold: "RH",
		Requeued: "RQ", Resizing: "RS", Revoked: "RV", Signaling: "SI", SpecialExit: "SE",
		StageOut: "SO", Stopped: "ST", Suspended: "S", Timeout: "TO",
	}
	if len(long) != len(States()) {
		t.Fatalf("test covers %d states of %d", len(long), len(States()))
	}
	for s, short := range long {
		for _, in := range []string{string(s), short, strings.ToLower(string(s)), " " + string(s) + "\n"} {
			got, err := ParseState(in)
			if err != nil || got != s {
				t.Errorf("ParseState(%q) = %q, %v; want %s", in, got, err, s)
			}
		}
		if s.Short() != short {
			t.Errorf("%s.Short() = %q, want %q", s, s.Short(), short)
		}
	}
	more := map[string]State{
		"CANCELLED by 1000": Cancelled,
		"CANCELLED by 0":    Cancelled,
		"CANCELLED+":        Cancelled,
		"OUT_OF_ME+":        OutOfMemory,
		"RESV_DEL_+":        ResvDelHold,
		"REQUEUE_H+":        RequeueHold,
		"REQUEUE_F+":        RequeueFed,
		"CONFIGURI+":        Configuring,
		"SPECIAL_E+":        SpecialExit,
		"COMPLETIN+":        Completing,
		"COMPLETED+":        Completed,
	}
	for in, want := range more {
		if got, err := ParseState(in); err != nil || got != want {
			t.Errorf("ParseState(%q) = %q, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{
		"", " ", "?", "UNKNOWN", "RUNNING by 1000", "CANCELLED by", "CANCELLED by x", "CANCELLED 1000",
		"CANCELLED by 1000 and more", "COMPLET+", "RE+", "S+", "R+", "RUNNING,COMPLETING", "RUN", "POWER_UP_NODE",
		"PENDING\x00", "R\x1b[2J", "ＲＵＮＮＩＮＧ",
	} {
		got, err := ParseState(in)
		if err == nil {
			t.Errorf("ParseState(%q) = %q, want an error", in, got)
			continue
		}
		if in != "" && strings.TrimSpace(in) != "" && !strings.Contains(err.Error(), "job state") {
			t.Errorf("ParseState(%q): %v does not say what it read", in, err)
		}
		if strings.ContainsAny(err.Error(), "\x00\x1b\n") {
			t.Errorf("ParseState(%q): error is not one clean line: %q", in, err)
		}
	}
}

func TestDescribe(t *testing.T) {
	want := map[State]string{
		Pending:     "queued",
		Configuring: "queued: nodes are booting",
		Requeued:    "queued: requeued",
		RequeueHold: "queued: requeued and held",
		RequeueFed:  "queued: requeued by the federation",
		ResvDelHold: "queued: held, its reservation was deleted",
		SpecialExit: "queued: held after a special exit",
		Running:     "running",
		Resizing:    "running: resizing",
		Signaling:   "running: being signalled",
		Suspended:   "suspended",
		Stopped:     "stopped",
		Completing:  "ending",
		StageOut:    "ending: staging out",
		BootFail:    "ended: node failed to boot",
		Cancelled:   "ended: cancelled",
		Completed:   "ended: completed",
		Deadline:    "ended: deadline reached",
		Failed:      "ended: failed",
		NodeFail:    "ended: node failure",
		OutOfMemory: "ended: out of memory",
		Preempted:   "ended: preempted",
		Revoked:     "ended: revoked, it started on another cluster",
		Timeout:     "ended: time limit reached",
	}
	for _, s := range States() {
		got := s.Describe()
		if got != want[s] {
			t.Errorf("%s.Describe() = %q, want %q", s, got, want[s])
		}
		if got != strings.ToLower(got) {
			t.Errorf("%s.Describe() = %q is not lower-case", s, got)
		}
		if s.Ended() != strings.HasPrefix(got, "ended: ") {
			t.Errorf("%s.Describe() = %q: ended states, and only they, start with \"ended: \"", s, got)
		}
	}
	if got := State("BOGUS").Describe(); got != "unknown job state" {
		t.Errorf("unknown Describe = %q", got)
	}
}

func TestRequeued(t *testing.T) {
	for _, s := range States() {
		want := s == Requeued || s == RequeueHold || s == SpecialExit
		if s.Requeued() != want {
			t.Errorf("%s.Requeued() = %v", s, !want)
		}
		if s.Requeued() && !s.Queued() {
			t.Errorf("%s is requeued but not queued", s)
		}
	}
}
