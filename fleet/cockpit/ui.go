package cockpit

import (
	"fmt"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
)

// Actions are what the keys do. Each runs the same controller method as
// the command of the same name (ControllerActions): the UI never has its
// own way to collect or apply.
type Actions interface {
	// Command is an action that takes the terminal until it ends
	// (attach, logs and diff in a pager, collect, apply).
	Command(fleetName, machine, action string) tea.ExecCommand
	// Run runs an action in the background (kill, suspend, start, stop,
	// run with a task, fork with a count) and returns the last line it
	// said.
	Run(fleetName, machine, action string, arg string) (string, error)
	// Allow is fleet net allow PATTERN MACHINE.
	Allow(fleetName, machine, pattern string) error
}

type mode int

const (
	normal mode = iota
	filtering
	tasking
	forking // asking how many children
	helping
)

// UI is fleet top's Bubble Tea model. Everything it draws comes from the
// Model; what it does goes through Actions.
type UI struct {
	Model    *Model
	Actions  Actions
	Notifier *Notifier
	Title    string // "fleet top · myproj"

	width, height int
	mode          mode
	filter, input string
	selKey        string // fleet/name of the selected row
	status        string
	statusAt      time.Time
	refusedAt     time.Time // when a refusal was last announced
	refusedKey    string    // which: refusalKey of its machine and host
	recent        []Event   // newest first
	now           func() time.Time
}

// actionDone reports a background action or a process that had the
// terminal.
type actionDone struct {
	text string
	err  error
}

// allowDone is a refused host allowed from the UI.
type allowDone struct{ AllowedMsg }

// Init starts nothing: the feed sends messages from outside.
func (u *UI) Init() tea.Cmd { return nil }

func (u *UI) clock() time.Time {
	if u.now != nil {
		return u.now()
	}
	return time.Now()
}

func (u *UI) say(format string, args ...any) {
	u.status, u.statusAt = session.Clean(fmt.Sprintf(format, args...), 300), u.clock()
}

// Update takes a feed message, a key or a finished action.
func (u *UI) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		u.width, u.height = msg.Width, msg.Height
	case MachinesMsg, AgentMsg, DecisionMsg, AllowedMsg:
		for _, ev := range u.Model.Apply(msg) {
			if ev.Kind == KindEgressDenied {
				u.refusedAt, u.refusedKey = u.clock(), refusalKey(ev.Fleet, ev.Machine, ev.Host, ev.Port)
			}
			u.recent = append([]Event{ev}, u.recent...)
			if len(u.recent) > 20 {
				u.recent = u.recent[:20]
			}
			if u.Notifier != nil {
				u.Notifier.Notify(ev)
			}
		}
	case allowDone:
		u.Model.Apply(msg.AllowedMsg)
		u.say("%s: allowed %s (fleet net ls shows it)", msg.Machine, msg.Pattern)
	case actionDone:
		if msg.err != nil {
			u.say("%s: %v", msg.text, oneLine(msg.err.Error()))
		} else if msg.text != "" {
			u.say("%s", msg.text)
		}
	case tea.KeyMsg:
		return u.key(msg)
	}
	return u, nil
}

// oneLine is the last line of a command's output or error.
func oneLine(s string) string { return strings.TrimSpace(execx.Tail([]byte(s), 1)) }

func (u *UI) rows() []Row { return u.Model.Rows(u.filter) }

// selected is the row under the cursor (the first when the selected
// one went away).
func (u *UI) selected() (Row, int, bool) {
	rs := u.rows()
	if len(rs) == 0 {
		return Row{}, -1, false
	}
	for i, r := range rs {
		if key(r.Fleet, r.Name) == u.selKey {
			return r, i, true
		}
	}
	u.selKey = key(rs[0].Fleet, rs[0].Name)
	return rs[0], 0, true
}

func (u *UI) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	s := k.String()
	switch u.mode {
	case helping:
		u.mode = normal
		return u, nil
	case filtering, tasking, forking:
		switch s {
		case "esc", "ctrl+c":
			if u.mode == filtering {
				u.filter = ""
			}
			u.mode, u.input = normal, ""
		case "enter":
			m := u.mode
			u.mode = normal
			switch m {
			case tasking:
				return u, u.startTask(strings.TrimSpace(u.input))
			case forking:
				return u, u.startFork(strings.TrimSpace(u.input))
			}
		case "backspace":
			if r := []rune(u.input); len(r) > 0 {
				u.input = string(r[:len(r)-1])
			}
		default:
			if k.Type == tea.KeyRunes || k.Type == tea.KeySpace {
				u.input += string(k.Runes)
				if k.Type == tea.KeySpace && len(k.Runes) == 0 {
					u.input += " "
				}
			}
		}
		if u.mode == filtering {
			u.filter = u.input
		}
		return u, nil
	}
	r, i, ok := u.selected()
	switch s {
	case "q", "ctrl+c":
		return u, tea.Quit
	case "?":
		u.mode = helping
		return u, nil
	case "/":
		u.mode, u.input = filtering, u.filter
		return u, nil
	case "up", "down", "home", "end", "pgup", "pgdown":
		rs := u.rows()
		if !ok {
			return u, nil
		}
		switch s {
		case "up":
			i = max(i-1, 0)
		case "down":
			i = min(i+1, len(rs)-1)
		case "home", "pgup":
			i = 0
		default:
			i = len(rs) - 1
		}
		u.selKey = key(rs[i].Fleet, rs[i].Name)
		return u, nil
	}
	if !ok {
		return u, nil
	}
	switch s {
	case "enter":
		// A parked machine is resumed by the attach (fleet attach).
		if r.Parked == "" && (r.Agent == nil || !r.Agent.State.Live()) {
			u.say("%s has no live agent to attach to (%s); n starts one", r.Name, r.State())
			return u, nil
		}
		return u, u.takeTerminal(r, "attach")
	case "l":
		return u, u.takeTerminal(r, "logs")
	case "d":
		return u, u.takeTerminal(r, "diff")
	case "c":
		return u, u.takeTerminal(r, "collect")
	case "a":
		return u, u.takeTerminal(r, "apply")
	case "k":
		return u, u.background(r, "kill", "")
	case "s":
		if r.Machine == fleet.StateSuspended || r.Machine == fleet.StateStopped {
			return u, u.background(r, "start", "")
		}
		return u, u.background(r, "suspend", "")
	case "S":
		return u, u.background(r, "stop", "")
	case "n":
		if r.Agent != nil && r.Agent.State.Live() {
			u.say("%s's agent is %s: k kills it before a new task", r.Name, r.Agent.State)
			return u, nil
		}
		u.mode, u.input = tasking, ""
		return u, nil
	case "f":
		// A parked machine is resumed by the fork, as by the other keys.
		if r.Machine != fleet.StateRunning && r.Parked == "" {
			u.say("%s is %s: only a running machine can be forked (s starts it)", r.Name, r.State())
			return u, nil
		}
		u.mode, u.input = forking, ""
		return u, nil
	case "e":
		rr, f, found := u.shownRefusal()
		if !found {
			u.say("no refused host to allow")
			return u, nil
		}
		r = rr
		pattern := fleet.RefusedPattern(f.Host, f.Port)
		if !f.Allowable {
			u.say("%s: %s cannot be allowed: %s", r.Name, pattern, f.Reason)
			return u, nil
		}
		fl, name, acts := r.Fleet, r.Name, u.Actions
		u.say("%s: allowing %s...", name, pattern)
		return u, func() tea.Msg {
			if err := acts.Allow(fl, name, pattern); err != nil {
				return actionDone{text: name + ": allow " + pattern, err: err}
			}
			return allowDone{AllowedMsg{Fleet: fl, Machine: name, Pattern: pattern}}
		}
	}
	return u, nil
}

func (u *UI) takeTerminal(r Row, action string) tea.Cmd {
	c := u.Actions.Command(r.Fleet, r.Name, action)
	name := r.Name
	return tea.Exec(c, func(err error) tea.Msg {
		if err != nil {
			return actionDone{text: name + ": " + action, err: err}
		}
		return actionDone{text: name + ": back from " + action}
	})
}

func (u *UI) background(r Row, action, arg string) tea.Cmd {
	fl, name, acts := r.Fleet, r.Name, u.Actions
	u.say("%s: %s...", name, action)
	return func() tea.Msg {
		out, err := acts.Run(fl, name, action, arg)
		if err != nil {
			return actionDone{text: name + ": " + action, err: err}
		}
		if out = oneLine(out); out == "" {
			out = name + ": " + action + " done"
		}
		return actionDone{text: out}
	}
}

func (u *UI) startTask(task string) tea.Cmd {
	r, _, ok := u.selected()
	if !ok || task == "" {
		u.say("no task given")
		return nil
	}
	return u.background(r, "run", task)
}

// startFork forks the selected machine into the count typed (none: 1).
func (u *UI) startFork(count string) tea.Cmd {
	r, _, ok := u.selected()
	if !ok {
		return nil
	}
	if count == "" {
		count = "1"
	}
	if _, err := forkCount(count); err != nil {
		u.say("%s: %v", r.Name, err)
		return nil
	}
	return u.background(r, "fork", count)
}

// View draws the screen: exactly the terminal's height, no line wider
// than it.
func (u *UI) View() string {
	w, h := u.width, u.height
	if w <= 0 || h <= 0 {
		w, h = 80, 24
	}
	var lines []string
	rows := u.rows()
	lines = append(lines, u.header(rows))
	body := h - 4 // header, column titles, notice, keys
	if u.mode == helping {
		lines = append(lines, "")
		lines = append(lines, helpLines...)
	} else {
		lines = append(lines, "\x1b[1m"+columns("  ", "MACHINE", "STATE", "TIME", "TURNS", "TOKENS", "COST", "GIT", "MEM")+"\x1b[0m")
		sel, si, _ := u.selected()
		// Two lines a machine; the window keeps the selection in view.
		per := 2
		fit := max(body/per, 1)
		first := 0
		if si >= fit {
			first = si - fit + 1
		}
		for i := first; i < len(rows) && i < first+fit; i++ {
			r := rows[i]
			mark := "  "
			if key(r.Fleet, r.Name) == key(sel.Fleet, sel.Name) {
				mark = "> "
			}
			line := columns(mark, r.Tree+r.Name, stateCell(r), elapsed(r), turns(r), tokens(r), cost(r), gitCell(r), HostMem(r.Memory))
			if mark == "> " {
				line = "\x1b[7m" + ansi.Truncate(line, w, "") + "\x1b[0m"
			}
			lines = append(lines, line, "\x1b[2m    "+safe(detail(r))+"\x1b[0m")
		}
		if len(rows) == 0 {
			lines = append(lines, "  no machines (fleet spawn N makes some)")
		}
	}
	for len(lines) < h-2 {
		lines = append(lines, "")
	}
	lines = lines[:h-2]
	lines = append(lines, u.notice(), u.keys())
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, w, "…")
	}
	return strings.Join(lines, "\n")
}

var helpLines = []string{
	"  enter  attach to the agent (detach with Ctrl-b d returns here)",
	"  l      the agent's log in a pager       d  the diff since its start, in a pager",
	"  c      collect: its commits as fleet/<machine>",
	"  a      collect, show flagged paths, then apply (merge) if you say y",
	"  k      kill the agent                   n  a new task on an idle machine",
	"  f      fork: N children go on from this moment (asks N; enter: 1)",
	"  s      suspend (or resume)              S  stop the machine",
	"  e      allow the host it was refused, for this machine (fleet net allow)",
	"  /      filter by name or state          up/down  select",
	"  ?      this help                        q  quit",
	"",
	"  press any key to return",
}

func (u *UI) header(rows []Row) string {
	counts := map[string]int{}
	var spends []*fleet.Spend
	var own uint64
	measured := false
	for _, r := range rows {
		if r.Memory != nil {
			own, measured = own+r.Memory.Unique, true
		}
		st := r.State()
		if strings.HasPrefix(st, "failed") {
			st = "failed"
		}
		counts[st]++
		spends = append(spends, r.Spend)
	}
	parts := []string{u.Title, fmt.Sprintf("%d machines", len(rows))}
	for _, st := range []string{"working", "waiting", "succeeded", "failed", "lost", "idle"} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
		}
	}
	t := fleet.TotalSpend(spends)
	if t.Calls > 0 {
		parts = append(parts, HumanTokens(t.Tokens())+" tokens", Dollars(t.CostUSD))
	}
	if measured {
		// Shared pages are the same pages across machines: only the
		// machines' own memory adds up.
		parts = append(parts, HumanBytes(own)+" host memory of their own")
	}
	if u.filter != "" {
		parts = append(parts, "filter: "+u.filter)
	}
	return "\x1b[1m" + safe(strings.Join(parts, " · ")) + "\x1b[0m"
}

func (u *UI) notice() string {
	switch u.mode {
	case filtering:
		return "filter: " + safe(u.input) + "█"
	case tasking:
		r, _, _ := u.selected()
		return "task for " + safe(r.Name) + ": " + safe(u.input) + "█"
	case forking:
		r, _, _ := u.selected()
		return "fork " + safe(r.Name) + " into how many (enter: 1): " + safe(u.input) + "█"
	}
	// What the user just did comes first, then a refusal to answer. The
	// refusal the line would offer, announced since the user's word, is
	// newer news once the word has been up a second: a guest trying new
	// names cannot keep the user's words off the screen, nor another
	// machine's refusals put an old one in front of them.
	r, f, found := u.shownRefusal()
	if age := u.clock().Sub(u.statusAt); u.status != "" && age < 5*time.Second {
		news := found && u.refusedAt.After(u.statusAt) && u.refusedKey == refusalKey(r.Fleet, r.Name, f.Host, f.Port)
		if !news || age < time.Second {
			return safe(u.status)
		}
	}
	if found {
		{
			hint := "e allows it"
			if !f.Allowable {
				hint = "allowing would not help"
			}
			return fmt.Sprintf("\x1b[33m! %s was refused %s · %s (%s)\x1b[0m", safe(r.Name), safe(fleet.RefusedPattern(f.Host, f.Port)), hint, safe(f.Reason))
		}
	}
	if u.status != "" && u.clock().Sub(u.statusAt) < time.Minute {
		return safe(u.status)
	}
	if len(u.recent) > 0 {
		e := u.recent[0]
		return e.Time.Local().Format("15:04:05") + " " + safe(e.Text())
	}
	return ""
}

// refusalKey names one machine's refusal of one host and port.
func refusalKey(fleetName, machine, host string, port int) string {
	return fmt.Sprintf("%s %s:%d", key(fleetName, machine), host, port)
}

// shownRefusal is the refusal the notice line offers to allow: the
// selected machine's newest, else the newest of any machine, from the
// last ten minutes.
func (u *UI) shownRefusal() (Row, Refusal, bool) {
	recent := func(f Refusal) bool { return u.clock().Sub(f.Last) < 10*time.Minute }
	if r, _, ok := u.selected(); ok {
		if f, found := r.PendingRefusal(); found && recent(f) {
			return r, f, true
		}
	}
	var best Row
	var bestF Refusal
	for _, r := range u.rows() {
		if f, found := r.PendingRefusal(); found && recent(f) && f.Last.After(bestF.Last) {
			best, bestF = r, f
		}
	}
	return best, bestF, !bestF.Last.IsZero()
}

func (u *UI) keys() string {
	if u.mode == filtering || u.mode == tasking || u.mode == forking {
		return "enter done · esc cancel"
	}
	return "enter attach · l logs · d diff · c collect · a apply · k kill · s suspend · n new · f fork · e allow · / filter · ? help · q quit"
}

// columns lays out a row. Every cell is cleaned (termsafe.Line): the
// model's strings came from guests and their audit logs, and whatever
// reached it, nothing drawn can move the cursor or erase a line.
// MEM comes last: 80 columns fit the rest, a wider terminal shows it.
func columns(mark, name, state, t, turns, tokens, cost, git, mem string) string {
	return fmt.Sprintf("%s%-14s %-17s %7s %5s %8s %-15s %-7s %s", mark, cut(safe(name), 14), cut(safe(state), 17), safe(t), safe(turns), safe(tokens), cut(safe(cost), 15), cut(safe(git), 7), cut(safe(mem), 11))
}

// safe is guest text on its way to the screen.
func safe(s string) string { return termsafe.Line(s) }

func cut(s string, n int) string { return ansi.Truncate(s, n, "…") }

func stateCell(r Row) string {
	st := r.State()
	if r.Agent != nil && r.Agent.State == session.Working && r.Agent.Tool != "" {
		st += " " + r.Agent.Tool
	}
	return st
}

func elapsed(r Row) string {
	if r.Agent == nil || r.Agent.ElapsedSec <= 0 {
		return "-"
	}
	d := time.Duration(r.Agent.ElapsedSec) * time.Second
	if d >= time.Hour {
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return d.String()
}

func turns(r Row) string {
	if r.Agent == nil || r.Agent.Turns == 0 {
		return "-"
	}
	return fmt.Sprint(r.Agent.Turns)
}

func tokens(r Row) string {
	if r.Spend == nil {
		return "-"
	}
	return HumanTokens(r.Spend.Tokens())
}

func cost(r Row) string {
	switch {
	case r.Spend == nil:
		return "-"
	case r.Spend.Reached:
		return "budget reached"
	case r.Spend.Budget.USD > 0:
		return Dollars(r.Spend.CostUSD) + "/" + Dollars(r.Spend.Budget.USD)
	}
	return Dollars(r.Spend.CostUSD)
}

func gitCell(r Row) string {
	if r.Agent == nil || r.Agent.Commits == nil {
		return "-"
	}
	return fmt.Sprintf("%dc %df", *r.Agent.Commits, *r.Agent.Files)
}

func detail(r Row) string {
	switch {
	case r.Err != "" && (r.Agent == nil || r.Agent.State.Live()):
		return "? " + r.Err
	case r.Agent == nil:
		return ""
	case r.Agent.State == session.Waiting:
		return "waiting: " + r.Agent.Message
	}
	return r.Agent.LastLine
}

// HostMem is a machine's host memory in a few characters: its own, then
// what it shares ("61M+188M"); "-" when not measured.
func HostMem(m *vm.HostMemory) string {
	if m == nil {
		return "-"
	}
	return HumanBytes(m.Unique) + "+" + HumanBytes(m.Shared)
}

// HumanBytes is a size in a few characters (61M, 1.2G, 24G).
func HumanBytes(b uint64) string {
	const mib, gib = 1 << 20, 1 << 30
	switch {
	case b >= 10*gib:
		return fmt.Sprintf("%.0fG", float64(b)/gib)
	case b >= gib:
		return fmt.Sprintf("%.1fG", float64(b)/gib)
	}
	return fmt.Sprintf("%dM", (b+mib/2)/mib)
}

// HumanTokens is a token count in a few characters (12.3k, 4.5M).
func HumanTokens(n int64) string {
	switch {
	case n >= 10_000_000:
		return fmt.Sprintf("%.0fM", float64(n)/1e6)
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%.0fk", float64(n)/1e3)
	case n >= 1_000:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// Dollars is a cost, with more digits when it is under a cent.
func Dollars(v float64) string {
	if v > 0 && v < 0.01 {
		return fmt.Sprintf("$%.4f", v)
	}
	return fmt.Sprintf("$%.2f", v)
}
