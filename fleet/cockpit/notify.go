package cockpit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// Notifier tells the user about notable events three ways: a terminal
// bell, a desktop notification (notify-send on Linux, osascript on
// macOS, skipped quietly where neither exists), and the project's notify
// command, which gets the event as JSON on stdin. Commands run in the
// background, each time-boxed, so a slow webhook never stalls the UI.
//
// A guest decides how many events there are (one refusal per name it
// tries), so the Notifier bounds what they cost: one notification per
// machine per Quiet, the events in between folded into the next (its
// Folded says how many), and at most MaxRunning commands at once with
// MaxQueued waiting; beyond that a command is dropped and Failed hears so.
type Notifier struct {
	Bell    io.Writer // the terminal; nil rings nothing
	Desktop bool
	Command string // fleet.hcl's notify, run with sh -c
	Dir     string // where the command runs (the project)
	Runner  execx.Runner
	// LookPath and GOOS are the host's (swapped in tests).
	LookPath func(string) (string, error)
	GOOS     string
	// Failed hears what could not be delivered (the notify command's error).
	Failed func(error)
	// Quiet, MaxRunning and MaxQueued default to NotifyQuiet,
	// MaxNotifyCommands and MaxQueuedNotifyCommands.
	Quiet                 time.Duration
	MaxRunning, MaxQueued int
	// Now is the clock (swapped in tests).
	Now func() time.Time

	mu       sync.Mutex
	machines map[string]*held
	slots    chan struct{}
	pending  int  // commands started or waiting for a slot
	dropping bool // Failed was told of the drops since the last start
	dropped  int
	wg       sync.WaitGroup
}

// held is one machine's notifications: when the last went out, and the
// events since, folded into one.
type held struct {
	last   time.Time
	ev     *Event
	folded int
	timer  *time.Timer
}

// NotifyTimeout bounds each desktop or notify command.
const NotifyTimeout = 10 * time.Second

// Bounds on notifications.
const (
	NotifyQuiet             = 5 * time.Second
	MaxNotifyCommands       = 4
	MaxQueuedNotifyCommands = 16
)

// Notify delivers ev if it is notable: now, or folded into the machine's
// next notification if one went out less than Quiet ago.
func (n *Notifier) Notify(ev Event) {
	if !ev.Notable() {
		return
	}
	n.mu.Lock()
	if n.machines == nil {
		n.machines = map[string]*held{}
	}
	k := ev.Fleet + "/" + ev.Machine
	h := n.machines[k]
	if h == nil {
		h = &held{}
		n.machines[k] = h
	}
	if h.ev == nil {
		h.ev = &ev
	} else {
		h.folded++
		if rank(ev.Kind) >= rank(h.ev.Kind) {
			h.ev = &ev
		}
	}
	now := n.now()
	var report []error
	if h.last.IsZero() || now.Sub(h.last) >= n.quiet() {
		report = n.release(h, now)
	} else if h.timer == nil {
		h.timer = time.AfterFunc(n.quiet()-now.Sub(h.last), func() { n.flush(k) })
	}
	n.mu.Unlock()
	n.tell(report)
}

// rank orders what a folded notification is about; of equals the newest
// wins. A spent budget comes first: the agent is stopped until the user
// raises it, and the agent's end that follows it is its consequence.
// Then an agent's news, then a refusal.
func rank(k Kind) int {
	switch k {
	case KindBudgetReached:
		return 2
	case KindAgent:
		return 1
	}
	return 0
}

// flush delivers what a machine's quiet time held back.
func (n *Notifier) flush(k string) {
	n.mu.Lock()
	var report []error
	if h := n.machines[k]; h != nil {
		h.timer = nil
		if h.ev != nil {
			report = n.release(h, n.now())
		}
	}
	n.mu.Unlock()
	n.tell(report)
}

// release delivers h's event with what it folded; n.mu is held.
func (n *Notifier) release(h *held, now time.Time) []error {
	ev := *h.ev
	ev.Folded = h.folded
	h.ev, h.folded, h.last = nil, 0, now
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if n.Bell != nil {
		n.Bell.Write([]byte{'\a'})
	}
	var report []error
	for _, c := range n.commands(ev) {
		if err := n.start(c); err != nil {
			report = append(report, err)
		}
	}
	return report
}

// start runs c in the background once a slot is free, or drops it when
// too many wait; n.mu is held.
func (n *Notifier) start(c execx.Cmd) error {
	maxRun, maxQueue := n.MaxRunning, n.MaxQueued
	if maxRun <= 0 {
		maxRun = MaxNotifyCommands
	}
	if maxQueue <= 0 {
		maxQueue = MaxQueuedNotifyCommands
	}
	if n.slots == nil {
		n.slots = make(chan struct{}, maxRun)
	}
	if n.pending >= maxRun+maxQueue {
		n.dropped++
		if n.dropping {
			return nil
		}
		n.dropping = true
		return fmt.Errorf("notifications: %d commands still run or wait; dropping more until they end", n.pending)
	}
	n.pending++
	n.dropping = false
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.slots <- struct{}{}
		defer func() {
			<-n.slots
			n.mu.Lock()
			n.pending--
			n.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), NotifyTimeout)
		defer cancel()
		if _, err := n.runner().Run(ctx, c); err != nil && c.Stdin != nil && n.Failed != nil {
			n.Failed(fmt.Errorf("notify command: %w", err))
		}
	}()
	return nil
}

func (n *Notifier) tell(errs []error) {
	for _, err := range errs {
		if n.Failed != nil {
			n.Failed(err)
		}
	}
}

func (n *Notifier) quiet() time.Duration {
	if n.Quiet > 0 {
		return n.Quiet
	}
	return NotifyQuiet
}

func (n *Notifier) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// Dropped is how many commands were dropped for want of a slot.
func (n *Notifier) Dropped() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dropped
}

// Wait delivers what quiet times still hold, then returns once every
// command started has ended.
func (n *Notifier) Wait() {
	n.mu.Lock()
	var report []error
	for _, h := range n.machines {
		if h.ev != nil {
			report = append(report, n.release(h, n.now())...)
		}
	}
	n.mu.Unlock()
	n.tell(report)
	n.wg.Wait()
}

func (n *Notifier) runner() execx.Runner {
	if n.Runner != nil {
		return n.Runner
	}
	return execx.Local{}
}

// commands are what delivering ev runs: a pure function of the event and
// the host.
func (n *Notifier) commands(ev Event) []execx.Cmd {
	var out []execx.Cmd
	if n.Desktop {
		if c, ok := n.desktop("fleet: "+termsafe.Line(ev.Machine), ev.Text()); ok {
			out = append(out, c)
		}
	}
	if n.Command != "" {
		b, _ := json.Marshal(ev)
		out = append(out, execx.Cmd{Name: "sh", Args: []string{"-c", n.Command}, Dir: n.Dir, Stdin: bytes.NewReader(append(b, '\n'))})
	}
	return out
}

func (n *Notifier) desktop(title, body string) (execx.Cmd, bool) {
	look, goos := n.LookPath, n.GOOS
	if look == nil {
		look = exec.LookPath
	}
	if goos == "" {
		goos = runtime.GOOS
	}
	switch goos {
	case "darwin":
		if _, err := look("osascript"); err == nil {
			// The texts are arguments, never part of the script.
			return execx.Cmd{Name: "osascript", Args: []string{"-e", "on run argv", "-e",
				"display notification (item 2 of argv) with title (item 1 of argv)", "-e", "end run", termsafe.Line(title), termsafe.Line(body)}}, true
		}
	default:
		if _, err := look("notify-send"); err == nil {
			// The body is markup to notification daemons; the title is not.
			return execx.Cmd{Name: "notify-send", Args: []string{"--app-name=fleet", "--", termsafe.Line(title), termsafe.Markup(body)}}, true
		}
	}
	return execx.Cmd{}, false
}
