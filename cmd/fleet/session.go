package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/fleet/cockpit"
	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/session"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
)

// taskOpts are the task flags of spawn and run.
type taskOpts struct {
	task, tasksFile, taskFile, agent string
}

const tasksFileHelp = `A tasks file holds one task per machine, separated by lines that hold
only "---"; each task may span lines and is passed exactly as written
(leading and trailing blank lines dropped). With fewer tasks than machines
the rest stay idle.`

// load returns the tasks (one for each machine when --task) and the
// profile, or none when no task was given. n is the number of machines.
func (o *taskOpts) load(n int, project string) ([][]byte, fleet.SessionRequest, error) {
	var req fleet.SessionRequest
	given := 0
	for _, s := range []string{o.task, o.tasksFile, o.taskFile} {
		if s != "" {
			given++
		}
	}
	if given > 1 {
		return nil, req, errors.New("give one of --task, --tasks and --task-file")
	}
	var tasks [][]byte
	switch {
	case o.task != "":
		for i := 0; i < n; i++ {
			tasks = append(tasks, []byte(o.task))
		}
	case o.taskFile != "":
		b, err := os.ReadFile(o.taskFile)
		if err != nil {
			return nil, req, fmt.Errorf("--task-file: %w", err)
		}
		if len(b) == 0 {
			return nil, req, fmt.Errorf("--task-file %s is empty", o.taskFile)
		}
		for i := 0; i < n; i++ {
			tasks = append(tasks, b)
		}
	case o.tasksFile != "":
		f, err := os.Open(o.tasksFile)
		if err != nil {
			return nil, req, fmt.Errorf("--tasks: %w", err)
		}
		defer f.Close()
		if tasks, err = fleet.ReadTasks(f); err != nil {
			return nil, req, fmt.Errorf("--tasks %s: %w", o.tasksFile, err)
		}
		if len(tasks) > n {
			return nil, req, fmt.Errorf("--tasks %s has %d tasks for %d machine(s)", o.tasksFile, len(tasks), n)
		}
	default:
		if o.agent != "" {
			return nil, req, errors.New("--agent needs a task (--task, --tasks or --task-file)")
		}
		return nil, req, nil
	}
	proj, err := projectSettings(context.Background(), project)
	if err != nil {
		return nil, req, err
	}
	if req, err = proj.SessionRequest(o.agent); err != nil {
		return nil, req, err
	}
	return tasks, req, nil
}

func (o *taskOpts) addFlags(cmd *cobra.Command, many bool) {
	f := cmd.Flags()
	f.StringVar(&o.task, "task", "", "start an agent with this task (exactly as given)")
	f.StringVar(&o.taskFile, "task-file", "", "start an agent with the task in this file")
	if many {
		f.StringVar(&o.tasksFile, "tasks", "", "start one agent per machine with the tasks in this file (format below)")
	}
	f.StringVar(&o.agent, "agent", "", "agent profile from fleet.hcl, or claude (default) or claude-interactive")
}

// startSessions starts tasks[i] on ms[i], in parallel.
func startSessions(ctx context.Context, c *fleet.Controller, ms []*fleet.Machine, tasks [][]byte, req fleet.SessionRequest) error {
	var g errgroup.Group
	errs := make([]error, len(ms))
	for i, m := range ms {
		if i >= len(tasks) {
			break
		}
		g.Go(func() error {
			r := req
			r.Task = tasks[i]
			errs[i] = c.Sessions().StartSession(ctx, m, r)
			return nil
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}

func newRunCmd(g *globals) *cobra.Command {
	var o taskOpts
	var project, idle string
	var budget egress.Budget
	cmd := &cobra.Command{
		Use:   "run VM --task TEXT",
		Short: "Start an agent with a task on an existing machine",
		Long: `Starts the agent (the claude profile unless --agent or fleet.hcl says
otherwise) in a tmux session in VM, as agent in /workspace, after the
project's setup command. The task reaches the agent byte for byte, whatever
it contains. The session survives this command, dropped connections and a
sleeping host: follow it with fleet logs -f, fleet attach or fleet wait.
ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN, if set here, go into the
session's environment only: not the disk, a command line or a log.`,
		Example: `  fleet run myproj-1 --task 'Fix the failing test in ./pkg/parse'
  fleet run myproj-2 --task-file task.md --agent aider
  fleet run myproj-1 --task "$(cat issue.txt)" && fleet logs -f myproj-1
  fleet run myproj-1 --task-file task.md --budget-usd 2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tasks, req, err := o.load(1, project)
			if err != nil {
				return err
			}
			if tasks == nil {
				return errors.New("no task: give --task TEXT or --task-file FILE")
			}
			if err := budget.Validate(); err != nil {
				return err
			}
			var idleFor time.Duration
			if idle != "" {
				if idleFor, err = fleet.ParseIdleSuspend(idle); err != nil {
					return fmt.Errorf("--idle-suspend: %w", err)
				}
			}
			c, ms, err := g.machines(cmd, args, false)
			if err != nil {
				return err
			}
			defer c.Close()
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			if idle != "" {
				if err := fleet.ParkingOf(c).SetIdleSuspend(cmd.Context(), args, false, idleFor); err != nil {
					return err
				}
			}
			// The cap is in place before the agent's first call.
			if !budget.IsZero() {
				if _, _, err := c.Net().ChangeBudget(cmd.Context(), args, false, fleet.SetBudget(budget)); err != nil {
					return err
				}
			}
			return startSessions(cmd.Context(), c, ms, tasks, req)
		},
	}
	o.addFlags(cmd, false)
	addBudgetFlags(cmd, &budget)
	cmd.Flags().StringVar(&idle, "idle-suspend", "", idleSuspendHelp+"\n(default: what the machine has from spawn or up)")
	cmd.Flags().StringVar(&project, "project", "", "folder whose fleet.hcl names profiles and setup (default: the current folder)")
	return cmd
}

// machines builds the fleet's controller and selects the named machines
// (or all). On success the caller closes the controller.
func (g *globals) machines(cmd *cobra.Command, names []string, all bool) (*fleet.Controller, []*fleet.Machine, error) {
	c, err := g.controller(cmd)
	if err != nil {
		return nil, nil, err
	}
	ms, err := selectMachines(c, names, all)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, ms, nil
}

func selectMachines(c *fleet.Controller, names []string, all bool) ([]*fleet.Machine, error) {
	s, err := c.Store().Load()
	if err != nil {
		return nil, err
	}
	return c.Select(s, names, all)
}

func newAttachCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "attach VM",
		Short: "Watch and steer a machine's agent live (detach with Ctrl-b d)",
		Long: `Attaches to the agent's tmux session through a PTY over SSH. Detaching
(Ctrl-b d) or closing the terminal leaves the agent running.`,
		Example: `  fleet attach myproj-1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ms, err := g.machines(cmd, args, false)
			if err != nil {
				return err
			}
			defer c.Close()
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			st, err := c.Sessions().SessionStatus(cmd.Context(), ms[0])
			if err != nil {
				return err
			}
			if !st.State.Live() {
				return fmt.Errorf("%s has no running agent (state: %s); start one with: fleet run %s --task TEXT", ms[0].Name, st.State, ms[0].Name)
			}
			cl, err := c.Guests().Connect(cmd.Context(), ms[0])
			if err != nil {
				return err
			}
			return interactiveCommand(ms[0].Name, "attach", cl, "tmux attach-session -t "+session.TmuxSession, true)
		},
	}
}

func newLogsCmd(g *globals) *cobra.Command {
	var all, follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs VM...|--all",
		Short: "Show agents' output (readable Claude output; --raw for stream-json)",
		Long: `Prints each agent's log, Claude's stream-json rendered for reading.
With --raw, the log as written: into a pipe or a file byte for byte, on a
terminal with control bytes and escape sequences shown escaped (as every
rendered line is). A line longer than 1 MiB is cut and marked, except with
--raw for one machine.`,
		Example: `  fleet logs myproj-1
  fleet logs -f --all
  fleet logs --raw myproj-1 | jq -c 'select(.type=="result")'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := machineArgs(args, all); err != nil {
				return err
			}
			c, ms, err := g.machines(cmd, args, all)
			if err != nil {
				return err
			}
			defer c.Close()
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			// Rendered lines are clean already; --raw is cleaned for a
			// terminal and left as written for a pipe or a file.
			out, flush := cmd.OutOrStdout(), func() {}
			if raw {
				out, flush = forPerson(out)
			}
			defer flush()
			return c.Sessions().Logs(cmd.Context(), ms, follow, raw, all || len(ms) > 1, out)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine, lines prefixed with its name")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the agents end")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the log as written (Claude's stream-json)")
	return cmd
}

func newWaitCmd(g *globals) *cobra.Command {
	var all, asJSON, notify bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait [VM...|--all]",
		Short: "Wait for agents to finish; non-zero exit if any failed",
		Long: `Returns when every named agent (all, without names) has ended, printing
each one's result. Exit status: 0 all succeeded, 1 any failed or was lost
(an exit status the agent left unreadable counts as failed), 2 the timeout
passed first. Without --timeout it waits as long as the agents run. Safe to
run again: sessions do not depend on it.
With --notify, each agent that ends, and each that starts waiting for
input, rings the bell, shows a desktop notification and runs fleet.hcl's
notify command with the event as JSON on stdin (as fleet top does).`,
		Example: `  fleet wait --all --timeout 2h
  fleet spawn 4 --task 'make the tests pass' && fleet wait --notify`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all && len(args) > 0 {
				return errors.New("name machines or pass --all, not both")
			}
			c, ms, err := g.machines(cmd, args, len(args) == 0)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			var changed func(*fleet.Machine, session.Status, bool)
			if notify {
				n, err := notifier(cmd, false, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				defer n.Wait()
				changed = func(m *fleet.Machine, st session.Status, first bool) {
					if first && st.State.Live() {
						return // where it stands, not news
					}
					n.Notify(cockpit.AgentEvent(time.Now(), c.Fleet, m.Name, st))
				}
			}
			res := c.Sessions().Wait(ctx, ms, 2*time.Second, changed)
			if asJSON {
				if err := printJSON(cmd, res); err != nil {
					return err
				}
			} else {
				for _, r := range res {
					cell := agentCell(r.Status, r.Err)
					if r.Why != "" {
						cell += " (machine " + string(lostState(r.Why)) + ")"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", r.Machine, termsafe.Line(cell))
				}
			}
			if late := timedOut(res); len(late) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "fleet: wait: gave up after %s: %s still running (fleet wait again, or fleet kill)\n", timeout, strings.Join(late, ", "))
			}
			if code := waitExit(res); code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every machine of the fleet (the default)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (e.g. 30m, 2h): exit status 2 (default: no limit)")
	cmd.Flags().BoolVar(&notify, "notify", false, "tell the user as each agent ends or waits for input (bell, desktop, fleet.hcl's notify)")
	return cmd
}

func newKillCmd(g *globals) *cobra.Command {
	return lifecycleCmd(g, "kill", "Stop machines' agents and keep the machines",
		"  fleet kill myproj-2\n  fleet kill --all",
		func(c *fleet.Controller, cmd *cobra.Command, args []string, all bool) error {
			ms, err := selectMachines(c, args, all)
			if err != nil {
				return err
			}
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			var errs []error
			for _, m := range ms {
				if err := c.Sessions().KillSession(cmd.Context(), m); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: agent stopped\n", m.Name)
			}
			return errors.Join(errs...)
		})
}

// waitExit is wait's exit status: 2 when an agent could not be waited
// for (the timeout passed, it could not be read), else 1 when any failed
// or was lost, else 0. Only states count: a guest's own number never
// becomes fleet's status.
func waitExit(res []fleet.WaitResult) int {
	code := 0
	for _, r := range res {
		switch {
		case r.Err != "":
			code = max(code, 2)
		case r.Status.State == session.Failed || r.Status.State == session.Lost:
			code = max(code, 1)
		case r.Status.State != session.Succeeded && r.Status.State != session.Idle:
			code = max(code, 1) // not an end: never success
		}
	}
	return code
}

// timedOut names the machines whose agents outlived wait's timeout.
func timedOut(res []fleet.WaitResult) []string {
	var out []string
	for _, r := range res {
		if r.TimedOut {
			out = append(out, r.Machine)
		}
	}
	return out
}

// agentCell renders an agent's state for ls and wait.
func agentCell(st session.Status, errText string) string {
	if errText != "" {
		return "unknown (" + errText + ")"
	}
	s := string(st.State)
	if st.State == "" {
		return "-"
	}
	if st.State == session.Failed {
		s = fmt.Sprintf("failed (exit %d)", st.ExitCode)
		if st.Message != "" {
			s = "failed (" + st.Message + ")"
		}
	}
	if st.State != session.Idle && st.ElapsedSec > 0 {
		s += " " + (time.Duration(st.ElapsedSec) * time.Second).String()
	}
	if st.Turns > 0 {
		s += fmt.Sprintf(" %d turns", st.Turns)
	}
	if st.CostUSD > 0 {
		s += fmt.Sprintf(" $%.2f", st.CostUSD)
	}
	return s
}

// lostState picks the machine state out of a lost agent's reason.
func lostState(why string) string {
	for _, s := range []string{fleet.StateDead, fleet.StateStopped} {
		if strings.Contains(why, " is "+s+":") {
			return s
		}
	}
	return "unreachable"
}
