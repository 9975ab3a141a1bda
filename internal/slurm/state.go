package slurm

import (
	"fmt"
	"strings"
)

// State is a Slurm job state as squeue %T and sacct's State print it.
// Slurm keeps a base state and flags; both commands print the flag when
// one is set (COMPLETING rather than the TIMEOUT beneath it), so a state
// read here says what the job is doing now, and sacct says how it ended.
type State string

// Every job state Slurm 22.05 prints.
const (
	BootFail    State = "BOOT_FAIL"
	Cancelled   State = "CANCELLED"
	Completed   State = "COMPLETED"
	Completing  State = "COMPLETING"
	Configuring State = "CONFIGURING"
	Deadline    State = "DEADLINE"
	Failed      State = "FAILED"
	NodeFail    State = "NODE_FAIL"
	OutOfMemory State = "OUT_OF_MEMORY"
	Pending     State = "PENDING"
	Preempted   State = "PREEMPTED"
	Running     State = "RUNNING"
	ResvDelHold State = "RESV_DEL_HOLD"
	RequeueFed  State = "REQUEUE_FED"
	RequeueHold State = "REQUEUE_HOLD"
	Requeued    State = "REQUEUED"
	Resizing    State = "RESIZING"
	Revoked     State = "REVOKED"
	Signaling   State = "SIGNALING"
	SpecialExit State = "SPECIAL_EXIT"
	StageOut    State = "STAGE_OUT"
	Stopped     State = "STOPPED"
	Suspended   State = "SUSPENDED"
	Timeout     State = "TIMEOUT"
)

// Class is which of five exclusive groups a state is in.
type Class int

const (
	// ClassQueued: waiting to run, with no process of the job running.
	ClassQueued Class = iota + 1
	// ClassRunning: the job's script runs on its node.
	ClassRunning
	// ClassHeld: the job keeps its allocation but does not execute.
	ClassHeld
	// ClassEnding: the job is over and Slurm is cleaning up.
	ClassEnding
	// ClassEnded: the job is over for good.
	ClassEnded
)

type stateInfo struct {
	short  string // squeue %t
	class  Class
	detail string // after the class word in Describe; "" for none
}

// states is every state, how squeue %t abbreviates it, its class and
// what to tell a person. Decisions beside the obvious:
//   - CONFIGURING is queued: nodes are allocated but booting, and the
//     script has not started.
//   - REQUEUED, REQUEUE_HOLD, REQUEUE_FED, RESV_DEL_HOLD and SPECIAL_EXIT
//     are pending jobs (the held ones wait for a release): queued.
//   - RESIZING and SIGNALING are running: the allocation and the script
//     are there; a signal to the job is on its way (scancel --signal,
//     a suspend), SIGKILL shows as COMPLETING instead.
//   - SUSPENDED and STOPPED are held: neither running nor ended.
//   - COMPLETING and STAGE_OUT are ending: the script is over.
//   - REVOKED is ended here: a federated sibling started elsewhere.
var states = map[State]stateInfo{
	Pending:     {"PD", ClassQueued, ""},
	Configuring: {"CF", ClassQueued, "nodes are booting"},
	Requeued:    {"RQ", ClassQueued, "requeued"},
	RequeueHold: {"RH", ClassQueued, "requeued and held"},
	RequeueFed:  {"RF", ClassQueued, "requeued by the federation"},
	ResvDelHold: {"RD", ClassQueued, "held, its reservation was deleted"},
	SpecialExit: {"SE", ClassQueued, "held after a special exit"},
	Running:     {"R", ClassRunning, ""},
	Resizing:    {"RS", ClassRunning, "resizing"},
	Signaling:   {"SI", ClassRunning, "being signalled"},
	Suspended:   {"S", ClassHeld, ""},
	Stopped:     {"ST", ClassHeld, ""},
	Completing:  {"CG", ClassEnding, ""},
	StageOut:    {"SO", ClassEnding, "staging out"},
	BootFail:    {"BF", ClassEnded, "node failed to boot"},
	Cancelled:   {"CA", ClassEnded, "cancelled"},
	Completed:   {"CD", ClassEnded, "completed"},
	Deadline:    {"DL", ClassEnded, "deadline reached"},
	Failed:      {"F", ClassEnded, "failed"},
	NodeFail:    {"NF", ClassEnded, "node failure"},
	OutOfMemory: {"OOM", ClassEnded, "out of memory"},
	Preempted:   {"PR", ClassEnded, "preempted"},
	Revoked:     {"RV", ClassEnded, "revoked, it started on another cluster"},
	Timeout:     {"TO", ClassEnded, "time limit reached"},
}

// States is every job state, in a fixed order.
func States() []State {
	return []State{
		Pending, Configuring, Requeued, RequeueHold, RequeueFed, ResvDelHold, SpecialExit,
		Running, Resizing, Signaling,
		Suspended, Stopped,
		Completing, StageOut,
		BootFail, Cancelled, Completed, Deadline, Failed, NodeFail, OutOfMemory, Preempted, Revoked, Timeout,
	}
}

var byShort = func() map[string]State {
	m := make(map[string]State, len(states))
	for s, i := range states {
		m[i.short] = s
	}
	return m
}()

// ParseState reads a state as squeue (%T or the short %t) or sacct print
// it: "CANCELLED by 1000" (who cancelled), and "CANCELLED+" or a name cut
// short with '+' (sacct without --parsable2 cuts long names to fit).
func ParseState(s string) (State, error) {
	v := strings.ToUpper(strings.TrimSpace(s))
	if word, rest, ok := strings.Cut(v, " "); ok {
		uid, by := strings.CutPrefix(rest, "BY ")
		if word != string(Cancelled) || !by || uid == "" || len(uid) > 10 || strings.Trim(uid, "0123456789") != "" {
			return "", fmt.Errorf("unknown job state %s", quote(s))
		}
		v = word
	}
	if v == "" {
		return "", fmt.Errorf("empty job state")
	}
	if _, ok := states[State(v)]; ok {
		return State(v), nil
	}
	if st, ok := byShort[v]; ok {
		return st, nil
	}
	if cut, ok := strings.CutSuffix(v, "+"); ok && len(cut) >= 2 {
		var found State
		for st := range states {
			if strings.HasPrefix(string(st), cut) {
				if found != "" {
					return "", fmt.Errorf("ambiguous job state %s", quote(s))
				}
				found = st
			}
		}
		if found != "" {
			return found, nil
		}
	}
	return "", fmt.Errorf("unknown job state %s", quote(s))
}

// Class is s's class; 0 for a State that is not one of Slurm's.
func (s State) Class() Class { return states[s].class }

// Queued reports whether the job waits to run: PENDING, CONFIGURING and
// the requeued and held pending states.
func (s State) Queued() bool { return s.Class() == ClassQueued }

// Running reports whether the job's script runs: RUNNING, RESIZING,
// SIGNALING.
func (s State) Running() bool { return s.Class() == ClassRunning }

// Held reports whether the job keeps its allocation without executing:
// SUSPENDED, STOPPED.
func (s State) Held() bool { return s.Class() == ClassHeld }

// Ending reports whether the job is over and being cleaned up:
// COMPLETING, STAGE_OUT.
func (s State) Ending() bool { return s.Class() == ClassEnding }

// Ended reports whether the job is over for good.
func (s State) Ended() bool { return s.Class() == ClassEnded }

// Requeued reports whether the job ran before and is back in the queue:
// what it ran on its node is gone.
func (s State) Requeued() bool {
	return s == Requeued || s == RequeueHold || s == SpecialExit
}

var classWord = map[Class]string{
	ClassQueued: "queued", ClassRunning: "running", ClassHeld: "held",
	ClassEnding: "ending", ClassEnded: "ended",
}

// Describe is a short lower-case phrase for a person: "queued",
// "running", "suspended", "ending", and every ended state as "ended: "
// and why ("ended: time limit reached", "ended: cancelled").
func (s State) Describe() string {
	i, ok := states[s]
	switch {
	case !ok:
		return "unknown job state"
	case i.class == ClassHeld:
		return strings.ToLower(string(s))
	case i.detail == "":
		return classWord[i.class]
	}
	return classWord[i.class] + ": " + i.detail
}

// Short is squeue %t's abbreviation of s.
func (s State) Short() string { return states[s].short }
