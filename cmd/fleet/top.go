package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/fleet/cockpit"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// controllers are the fleets top and events watch: the selected one, or
// every fleet with machines. The caller closes them.
func (g *globals) controllers(cmd *cobra.Command, all bool) ([]*fleet.Controller, error) {
	if !all {
		c, err := g.controller(cmd)
		if err != nil {
			return nil, err
		}
		return []*fleet.Controller{c}, nil
	}
	l, err := g.layout()
	if err != nil {
		return nil, err
	}
	dirs, err := os.ReadDir(l.FleetsDir())
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var out []*fleet.Controller
	for _, d := range dirs {
		if !d.IsDir() || fleet.ValidateFleetName(d.Name()) != nil {
			continue
		}
		one := *g
		one.fleetName = d.Name()
		c, err := one.controller(cmd)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("fleet %s: %w", d.Name(), err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("there are no fleets (fleet spawn N makes one)")
	}
	return out, nil
}

func closeAll(cs []*fleet.Controller) {
	for _, c := range cs {
		c.Close()
	}
}

// notifier is the project's notifications: the bell and desktop unless
// quiet, and fleet.hcl's notify command.
func notifier(cmd *cobra.Command, quiet bool, bell io.Writer) (*cockpit.Notifier, error) {
	proj, err := projectSettings(cmd.Context(), "")
	if err != nil {
		return nil, err
	}
	wd, _ := os.Getwd()
	n := &cockpit.Notifier{Command: proj.Notify, Dir: wd, Failed: func(err error) {
		fmt.Fprintln(cmd.ErrOrStderr(), "fleet:", oneLineErr(err))
	}}
	if !quiet {
		n.Bell, n.Desktop = bell, true
	}
	return n, nil
}

func oneLineErr(err error) string {
	s := strings.TrimSpace(err.Error())
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return termsafe.Line(s)
}

func newTopCmd(g *globals) *cobra.Command {
	var allFleets, quiet bool
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch, steer and review every agent of the fleet from one screen",
		Long: `A full-screen view of the fleet: one row per machine with its agent's state
(creating, booting, idle, working, waiting for input, succeeded, failed with
its exit status, lost, suspended, stopped), elapsed time, turns, the tokens
and cost the credential proxy counted, the last line of output, and commits
and changed files since the start. Rows change within a second: each
running machine has one watch on its kept SSH connection, and refusals are
read from the proxies' logs as they are written.

Keys: enter attach (Ctrl-b d comes back), l logs, d diff, c collect,
a apply (after collect shows flagged paths, and only if you say y), k kill,
s suspend or resume, S stop, n a new task, e allow a refused host for that
machine, / filter, ? help, q quit. Each runs the same code as the fleet
command of the same name.

When an agent finishes, fails, is lost or waits for input, or a proxy
refuses a host or a budget, fleet top rings the terminal bell, shows a
desktop notification (notify-send or osascript, where there is one) and
runs fleet.hcl's notify command with the event as JSON on stdin.`,
		Example: `  fleet top
  fleet top --all-fleets
  fleet top --quiet        # no bell, no desktop notifications`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !term.IsTerminal(int(os.Stdout.Fd())) || !term.IsTerminal(int(os.Stdin.Fd())) {
				return errors.New("fleet top needs a terminal (fleet events -f streams the same events for scripts)")
			}
			cs, err := g.controllers(cmd, allFleets)
			if err != nil {
				return err
			}
			defer closeAll(cs)
			n, err := notifier(cmd, quiet, os.Stderr)
			if err != nil {
				return err
			}
			for _, c := range cs {
				c.Progress = nil // the screen is the UI's
			}
			title := "fleet top · " + cs[0].Fleet
			if allFleets {
				title = fmt.Sprintf("fleet top · %d fleets", len(cs))
			}
			acts := g.topActions(cmd)
			ui := &cockpit.UI{Model: cockpit.NewModel(), Actions: acts, Notifier: n, Title: title}
			p := tea.NewProgram(ui, tea.WithAltScreen(), tea.WithContext(cmd.Context()))
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			feed := &cockpit.Feed{Controllers: cs, Send: func(m any) { p.Send(m) }}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); feed.Run(ctx) }()
			_, err = p.Run()
			cancel()
			wg.Wait()
			// An action started from a key (a start, a stop) finishes
			// even when the cockpit quits, as the command would.
			if n := acts.Running(); n > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "waiting for %d action(s) started in fleet top to finish...\n", n)
			}
			acts.Wait()
			n.Wait()
			if errors.Is(err, tea.ErrProgramKilled) && cmd.Context().Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&allFleets, "all-fleets", false, "every fleet on this host, not only this folder's")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no terminal bell and no desktop notifications (fleet.hcl's notify still runs)")
	return cmd
}

// topActions are fleet top's keys on the controller. Each action has a
// controller of its own (as the command of the same name would), so its
// progress is its own: the last line is what the cockpit shows. attach
// is this binary's own subcommand: it takes the terminal raw, and a
// process of its own gives it back whole whatever happens to the SSH
// session.
func (g *globals) topActions(cmd *cobra.Command) *cockpit.ControllerActions {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	return &cockpit.ControllerActions{
		Ctx: cmd.Context(),
		Open: func(fleetName string, progress io.Writer) (*fleet.Controller, error) {
			one := *g
			one.fleetName = fleetName
			one.logTo = progress // the driver's warnings too
			c, err := one.controller(cmd)
			if err != nil {
				return nil, err
			}
			// Nothing may write past the screen: the warning a boot
			// gives goes nowhere the cockpit shows.
			c.Progress, c.BeforeBoot = progress, nil
			return c, nil
		},
		Attach: func(fleetName, machine string) *exec.Cmd {
			return exec.Command(self, "attach", "--name", fleetName, machine)
		},
		Summaries: printSummaries,
	}
}

func newEventsCmd(g *globals) *cobra.Command {
	var allFleets, follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Agent and proxy events for scripts: states, waits for input, refusals",
		Long: `Without --follow, prints where each machine's agent stands and the refusals
its proxies have logged, then exits. With --follow, prints each event as it
happens (what fleet top announces), until interrupted:
  agent           an agent's state changed: working, waiting (for input,
                  with its message), succeeded, failed (with exit_code), lost
  egress_denied   a proxy refused a host (host, port); one event per host
                  and machine per 30 seconds however often the agent retries
  budget_reached  the credential proxy refused a call past the budget
--json prints one JSON object per line.`,
		Example: `  fleet events
  fleet events -f --json | jq -c 'select(.state=="waiting")'
  fleet events -f --all-fleets`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, err := g.controllers(cmd, allFleets)
			if err != nil {
				return err
			}
			defer closeAll(cs)
			print := func(ev cockpit.Event) error {
				if asJSON {
					b, _ := json.Marshal(ev)
					_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", termsafe.JSON(b))
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %-14s %s\n", ev.Time.Local().Format("15:04:05"), ev.Kind, ev.Text())
				return err
			}
			if !follow {
				evs, err := cockpit.Current(cmd.Context(), cs)
				if err != nil {
					return err
				}
				for _, ev := range evs {
					if err := print(ev); err != nil {
						return err
					}
				}
				return nil
			}
			for _, c := range cs {
				c.Progress = nil
			}
			return cockpit.Follow(cmd.Context(), cs, print)
		},
	}
	cmd.Flags().BoolVar(&allFleets, "all-fleets", false, "every fleet on this host")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "print events as they happen, until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	return cmd
}
