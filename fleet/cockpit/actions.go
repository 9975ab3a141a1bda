package cockpit

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/workspace"
	tea "github.com/charmbracelet/bubbletea"
)

// ControllerActions are fleet top's keys: each calls the controller
// method the fleet command of the same name calls, refusals and all.
// Only attach is another process, and the pager that logs and diff are
// shown in: both take the terminal over as a whole.
type ControllerActions struct {
	Ctx context.Context
	// Open gives one action its own controller of fleetName, which says
	// its progress to w (the action's last line is what the cockpit
	// shows); the action closes it.
	Open func(fleetName string, progress io.Writer) (*fleet.Controller, error)
	// Attach is the process that joins the terminal to a machine's agent
	// session (fleet attach).
	Attach func(fleetName, machine string) *exec.Cmd
	// Summaries prints what collect brought in, as fleet collect does.
	Summaries func(w io.Writer, sums []workspace.Summary)
	// Timeout bounds an action in the background (default 10 minutes).
	Timeout time.Duration

	running sync.WaitGroup
	count   atomic.Int32
}

// Running is how many background actions have not finished.
func (a *ControllerActions) Running() int { return int(a.count.Load()) }

// Wait waits for every background action to finish: one started from a
// key goes on when the cockpit quits, as the command would have.
func (a *ControllerActions) Wait() { a.running.Wait() }

// Run runs kill, start, suspend, stop, run (a new task, arg) or fork
// (into arg children) and returns its last line of progress.
func (a *ControllerActions) Run(fleetName, machine, action, arg string) (string, error) {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	a.running.Add(1)
	a.count.Add(1)
	defer func() { a.count.Add(-1); a.running.Done() }()
	// Quitting the cockpit does not cut a start or a stop in half (a
	// QEMU running that the state file does not know of); the timeout
	// still bounds it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.Ctx), timeout)
	defer cancel()
	// Only the last line is shown: keep the end of what it said.
	out := bounded.NewTail(bounded.Stderr)
	c, err := a.Open(fleetName, out)
	if err != nil {
		return "", err
	}
	defer c.Close()
	names := []string{machine}
	switch action {
	case "kill":
		m, release, err := awake(ctx, c, machine)
		if err != nil {
			return "", err
		}
		defer release()
		if err := c.Sessions().KillSession(ctx, m); err != nil {
			return "", err
		}
		fmt.Fprintf(out, "%s: agent stopped\n", m.Name)
	case "start":
		err = c.Start(ctx, names, false, fleet.StartOptions{})
	case "suspend":
		err = c.Suspend(ctx, names, false)
	case "stop":
		err = c.Stop(ctx, names, false)
	case "run":
		err = startTask(ctx, c, machine, arg)
	case "fork":
		err = fork(ctx, c, machine, arg, out)
	default:
		err = fmt.Errorf("fleet top has no action %q", action)
	}
	if err != nil {
		return "", err
	}
	return termsafe.Line(strings.TrimSpace(execx.Tail(out.Bytes(), 1))), nil
}

// awake is the named machine, resumed first if the idle parker
// suspended it (a key acts on it as its command would), and kept awake
// until release.
func awake(ctx context.Context, c *fleet.Controller, machine string) (*fleet.Machine, func(), error) {
	m, err := c.Machine(machine)
	if err != nil {
		return nil, nil, err
	}
	release, err := fleet.ParkingOf(c).KeepAwake(ctx, []*fleet.Machine{m})
	if err != nil {
		return nil, nil, err
	}
	return m, release, nil
}

// startTask is fleet run MACHINE --task TASK: the agent fleet.hcl names
// (else the default), after its setup.
func startTask(ctx context.Context, c *fleet.Controller, machine, task string) error {
	m, release, err := awake(ctx, c, machine)
	if err != nil {
		return err
	}
	defer release()
	proj, err := fleet.ProjectAt(ctx, "")
	if err != nil {
		return err
	}
	req, err := proj.SessionRequest("")
	if err != nil {
		return err
	}
	req.Task = []byte(task)
	return c.Sessions().StartSession(ctx, m, req)
}

// fork is fleet fork MACHINE N: the children run on what it ran.
func fork(ctx context.Context, c *fleet.Controller, machine, count string, out io.Writer) error {
	n, err := forkCount(count)
	if err != nil {
		return err
	}
	m, release, err := awake(ctx, c, machine)
	if err != nil {
		return err
	}
	defer release()
	res, err := c.Forks().Fork(ctx, fleet.ForkRequest{Source: m.Name, Count: n})
	if err != nil {
		return err
	}
	names := make([]string, len(res.Children))
	for i, ch := range res.Children {
		names[i] = ch.Name
	}
	fmt.Fprintf(out, "%s: forked into %s (paused %s)\n", m.Name, strings.Join(names, ", "), res.Paused.Round(time.Millisecond))
	return nil
}

// forkCount is the number of children typed, as fleet fork takes it.
func forkCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("the number of children must be a whole number, got %q", s)
	case n < 1:
		return 0, fmt.Errorf("the number of children must be at least 1, got %d", n)
	case n > fleet.MaxMachines:
		return 0, fmt.Errorf("%d children is too many: a fleet holds at most %d machines", n, fleet.MaxMachines)
	}
	return n, nil
}

// Allow is fleet net allow PATTERN MACHINE.
func (a *ControllerActions) Allow(fleetName, machine, pattern string) error {
	c, err := a.Open(fleetName, io.Discard)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Net().AllowHost(a.Ctx, []string{machine}, false, pattern)
	return err
}

// Command is an action that has the terminal until it ends: attach, logs
// and diff in a pager, collect (which shows its summary), and apply
// (which collects, shows the summary and merges if the user says y).
func (a *ControllerActions) Command(fleetName, machine, action string) tea.ExecCommand {
	switch action {
	case "attach":
		return ProcessCommand(a.Attach(fleetName, machine))
	case "logs":
		return a.paged(fleetName, func(ctx context.Context, c *fleet.Controller, w io.Writer) error {
			m, release, err := awake(ctx, c, machine)
			if err != nil {
				return err
			}
			defer release()
			return c.Sessions().Logs(ctx, []*fleet.Machine{m}, false, false, false, w)
		})
	case "diff":
		return a.paged(fleetName, func(ctx context.Context, c *fleet.Controller, w io.Writer) error {
			return c.Diff(ctx, machine, false, w)
		})
	case "collect":
		return a.onTerminal(fleetName, func(ctx context.Context, c *fleet.Controller, t *terminal) error {
			sums, err := c.Collect(ctx, []string{machine}, false, fleet.CollectOptions{})
			a.Summaries(t.out, sums)
			t.fail(err)
			t.pause()
			return nil // what went wrong is on the screen it leaves
		})
	case "apply":
		return a.onTerminal(fleetName, func(ctx context.Context, c *fleet.Controller, t *terminal) error {
			sums, err := c.Collect(ctx, []string{machine}, false, fleet.CollectOptions{})
			a.Summaries(t.out, sums)
			if err != nil {
				t.fail(err)
				t.pause()
				return fmt.Errorf("not applied: %w", err)
			}
			fmt.Fprintf(t.out, "\nMerge fleet/%s into the branch checked out in the project? [y/N] ", termsafe.Line(machine))
			switch t.line() {
			case "y", "Y", "yes":
				branch, into, err := c.Apply(ctx, machine, t.err)
				if err == nil {
					fmt.Fprintf(t.out, "merged %s into %s\n", termsafe.Line(branch), termsafe.Line(into))
				}
				t.fail(err)
			default:
				fmt.Fprintln(t.out, "not applied")
			}
			t.pause()
			return nil
		})
	}
	return a.onTerminal(fleetName, func(context.Context, *fleet.Controller, *terminal) error {
		return fmt.Errorf("fleet top has no action %q", action)
	})
}

// pagerScript runs $PAGER, else less, else more, on its stdin.
const pagerScript = `if [ -n "${PAGER:-}" ]; then exec sh -c "$PAGER"; elif command -v less >/dev/null; then exec less -R; else exec more; fi`

// paged shows what write writes in the user's pager, with the action's
// progress and error, as fleet logs or diff piped into it would. It is
// the agent's text (a diff of its files, its log): cleaned on its way,
// whatever the pager lets through.
func (a *ControllerActions) paged(fleetName string, write func(context.Context, *fleet.Controller, io.Writer) error) tea.ExecCommand {
	return &termCommand{run: func(t *terminal) error {
		pr, pw, err := os.Pipe()
		if err != nil {
			return err
		}
		pager := exec.Command("sh", "-c", pagerScript)
		pager.Stdin, pager.Stdout, pager.Stderr = pr, t.out, t.err
		if err := pager.Start(); err != nil {
			pr.Close()
			pw.Close()
			return fmt.Errorf("start the pager: %w", err)
		}
		pr.Close()
		ctx, cancel := context.WithCancel(a.Ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer pw.Close()
			w := &lockedWriter{w: termsafe.NewWriter(pw)}
			err := a.withController(fleetName, w, func(c *fleet.Controller) error { return write(ctx, c, w) })
			w.flush()
			// A pager quit early ends the pipe: nothing left to say.
			if err != nil && ctx.Err() == nil {
				fmt.Fprintln(pw, "fleet: "+termsafe.Text(err.Error()))
			}
		}()
		err = pager.Wait()
		cancel() // the user quit the pager: stop reading the guest
		<-done
		return err
	}}
}

func (a *ControllerActions) withController(fleetName string, progress io.Writer, fn func(*fleet.Controller) error) error {
	c, err := a.Open(fleetName, progress)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// lockedWriter lets the controller's progress and the action's output
// share one stream.
type lockedWriter struct {
	mu sync.Mutex
	w  *termsafe.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Flush()
}

// terminal is the screen an action has while fleet top waits.
type terminal struct {
	in       io.Reader
	out, err io.Writer
}

// fail says err the way fleet says a command's error.
func (t *terminal) fail(err error) {
	if err != nil {
		fmt.Fprintln(t.err, "fleet: "+termsafe.Text(err.Error()))
	}
}

// line reads one line the user types (at most 4 KiB of it), one byte at
// a time so nothing typed after it is taken from fleet top.
func (t *terminal) line() string {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 4096 {
		n, err := t.in.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				break
			}
			b = append(b, one[0])
		}
		if err != nil {
			break
		}
	}
	return strings.TrimSpace(string(b))
}

func (t *terminal) pause() {
	fmt.Fprint(t.out, "\n[enter returns to fleet top] ")
	t.line()
}

// onTerminal is run as a tea.ExecCommand: fleet top gives up the
// terminal, run has it with its own controller (whose progress goes to
// the terminal too), and fleet top takes it back.
func (a *ControllerActions) onTerminal(fleetName string, run func(context.Context, *fleet.Controller, *terminal) error) tea.ExecCommand {
	return &termCommand{run: func(t *terminal) error {
		c, err := a.Open(fleetName, t.err)
		if err != nil {
			t.fail(err)
			t.pause()
			return err
		}
		defer c.Close()
		return run(a.Ctx, c, t)
	}}
}

type termCommand struct {
	t   terminal
	run func(*terminal) error
}

func (c *termCommand) Run() error {
	if c.t.in == nil {
		c.t.in = os.Stdin
	}
	if c.t.out == nil {
		c.t.out = os.Stdout
	}
	if c.t.err == nil {
		c.t.err = os.Stderr
	}
	return c.run(&c.t)
}
func (c *termCommand) SetStdin(r io.Reader)  { c.t.in = r }
func (c *termCommand) SetStdout(w io.Writer) { c.t.out = w }
func (c *termCommand) SetStderr(w io.Writer) { c.t.err = w }

// ProcessCommand runs c with the terminal fleet top gives up, where c
// has no other stdin, stdout or stderr.
func ProcessCommand(c *exec.Cmd) tea.ExecCommand { return process{c} }

type process struct{ *exec.Cmd }

func (p process) SetStdin(r io.Reader) {
	if p.Stdin == nil {
		p.Stdin = r
	}
}
func (p process) SetStdout(w io.Writer) {
	if p.Stdout == nil {
		p.Stdout = w
	}
}
func (p process) SetStderr(w io.Writer) {
	if p.Stderr == nil {
		p.Stderr = w
	}
}
