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
)

// Notifier tells the user about notable events three ways: a terminal
// bell, a desktop notification (notify-send on Linux, osascript on
// macOS, skipped quietly where neither exists), and the project's notify
// command, which gets the event as JSON on stdin. Commands run in the
// background, each time-boxed, so a slow webhook never stalls the UI.
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

	wg sync.WaitGroup
}

// NotifyTimeout bounds each desktop or notify command.
const NotifyTimeout = 10 * time.Second

// Notify delivers ev if it is notable.
func (n *Notifier) Notify(ev Event) {
	if !ev.Notable() {
		return
	}
	if n.Bell != nil {
		n.Bell.Write([]byte{'\a'})
	}
	for _, c := range n.commands(ev) {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), NotifyTimeout)
			defer cancel()
			if _, err := n.runner().Run(ctx, c); err != nil && c.Stdin != nil && n.Failed != nil {
				n.Failed(fmt.Errorf("notify command: %w", err))
			}
		}()
	}
}

// Wait returns once every command started has ended.
func (n *Notifier) Wait() { n.wg.Wait() }

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
		if c, ok := n.desktop("fleet: "+ev.Machine, ev.Text()); ok {
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
				"display notification (item 2 of argv) with title (item 1 of argv)", "-e", "end run", title, body}}, true
		}
	default:
		if _, err := look("notify-send"); err == nil {
			return execx.Cmd{Name: "notify-send", Args: []string{"--app-name=fleet", "--", title, body}}, true
		}
	}
	return execx.Cmd{}, false
}
