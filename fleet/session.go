package fleet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/session"
)

// Sessions runs agents and commands in machines and reads back what they
// do: start, status, kill, logs, wait, exec and the cockpit's watch.
type Sessions struct{ c *Controller }

// Sessions is the agent-session concern of c.
func (c *Controller) Sessions() Sessions { return Sessions{c} }

// SessionRequest is one agent run on one machine.
type SessionRequest struct {
	Task    []byte
	Profile session.Profile
	Setup   []string            // project setup commands, run first in order (none: nil)
	Getenv  func(string) string // where credentials come from (os.Getenv)
}

// StartSession starts an agent in m's tmux session, replacing any
// previous session. It returns once tmux runs it.
func (ses Sessions) StartSession(ctx context.Context, m *Machine, r SessionRequest) error {
	if len(bytes.TrimSpace(r.Task)) == 0 {
		return fmt.Errorf("%s: the task is empty", m.Name)
	}
	if err := r.Profile.Validate(); err != nil {
		return err
	}
	if m.Prebuild != "" {
		r.Setup = nil // it ran in the prebuild
	}
	if _, err := ses.c.Guests().Connect(ctx, m); err != nil {
		return err // the machine's state, said once, before any step
	}
	// Only --credentials env forwards the host's key; with the credential
	// proxy (the default) the guest already has its token and nothing else.
	var creds []byte
	if m.Network == nil || m.Network.Credentials == CredentialsEnv {
		var err error
		if creds, err = session.CredentialInput(r.Getenv); err != nil {
			return err
		}
	}
	if st, err := ses.SessionStatus(ctx, m); err == nil && st.State.Live() {
		return fmt.Errorf("%s: an agent is still running (fleet kill %s first, or fleet wait %s)", m.Name, m.Name, m.Name)
	}
	in := session.LaunchInput(r.Task, session.RunScript(r.Profile, r.Setup), creds)
	if _, err := ses.c.Guests().guestRun(ctx, m, "start the session", session.LaunchScript(), bytes.NewReader(in)); err != nil {
		return err
	}
	ses.c.say("%s: %s started", m.Name, r.Profile.Name)
	return nil
}

// SessionStatus reports m's agent.
func (ses Sessions) SessionStatus(ctx context.Context, m *Machine) (session.Status, error) {
	out, err := ses.c.Guests().guestRun(ctx, m, "read the agent's status", session.StatusScript(), nil)
	if err != nil {
		return session.Status{}, err
	}
	return session.ParseStatus(out)
}

// KillSession stops m's agent and keeps the machine.
func (ses Sessions) KillSession(ctx context.Context, m *Machine) error {
	_, err := ses.c.Guests().guestRun(ctx, m, "kill the agent", session.KillScript(), nil)
	if guest.IsExit(err, 3) {
		return fmt.Errorf("%s has no agent session", m.Name)
	}
	return err
}

// Logs writes the machines' agent logs to w, rendered for reading unless
// raw; with follow, until each session ends. Lines are prefixed with the
// machine's name when prefix is set. Rendered lines are safe for a
// terminal; raw ones are as written (the caller cleans them for a
// terminal). A line longer than bounded.Line is cut and marked, except
// raw and unprefixed, which streams through whole.
func (ses Sessions) Logs(ctx context.Context, ms []*Machine, follow, raw, prefix bool, w io.Writer) error {
	var mu sync.Mutex
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := ""
			if prefix {
				name = m.Name + ": "
			}
			var out io.Writer = newLineWriter(bounded.Line, func(line []byte, cut int64) {
				text := string(line)
				if !raw {
					if text = session.Render(text); text == "" && cut == 0 {
						return
					}
				}
				// A rendered line may be several: each gets the prefix.
				mu.Lock()
				defer mu.Unlock()
				for _, l := range strings.Split(text+cutMark(cut), "\n") {
					fmt.Fprintf(w, "%s%s\n", name, l)
				}
			})
			if raw && !prefix {
				out = &lockedWriter{w: w, mu: &mu}
			}
			r, err := ses.c.Guests().guestRunner(ctx, m)
			if err != nil {
				errs[i] = err
				return
			}
			err = r.Run(ctx, guest.Cmd{Step: "read the logs", Script: session.LogsScript(follow), Stdout: out})
			if f, ok := out.(*lineWriter); ok {
				f.Flush()
			}
			if guest.IsExit(err, 3) {
				err = fmt.Errorf("%s: no session has run on this machine", m.Name)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WaitResult is one machine's end of Wait.
type WaitResult struct {
	Machine string         `json:"machine"`
	Status  session.Status `json:"status"`
	// Why a lost agent is lost (its machine died or was stopped).
	Why string `json:"why,omitempty"`
	Err string `json:"error,omitempty"`
	// TimedOut: ctx's deadline passed before the agent ended.
	TimedOut bool `json:"timed_out,omitempty"`
}

// statusTimeout bounds one status poll of Wait.
const statusTimeout = 30 * time.Second

// Wait polls the machines' agents until all have ended (or ctx ends) and
// reports each. A machine with no session counts as ended. changed, if
// set, hears each agent's state when first seen and when it changes
// (waiting for input among them), from many goroutines.
func (ses Sessions) Wait(ctx context.Context, ms []*Machine, every time.Duration, changed func(m *Machine, st session.Status, first bool)) []WaitResult {
	out := make([]WaitResult, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Machine = m.Name
			var last session.State
			var lastGood session.Status // what the last answered poll said
			for {
				// One poll is brief: a guest that does not answer is
				// asked again, not waited on past the caller's deadline.
				qctx, cancel := context.WithTimeout(ctx, statusTimeout)
				st, err := ses.SessionStatus(qctx, m)
				cancel()
				if err == nil {
					lastGood = st
				}
				if err == nil && changed != nil && st.State != last {
					changed(m, st, last == "")
					last = st.State
				}
				if err == nil && !st.State.Live() {
					out[i].Status = st
					ses.c.say("%s: %s", m.Name, describe(st))
					return
				}
				// A dead or stopped machine's agent is gone: lost, not
				// waited on. A paused or suspended one goes on once the
				// machine is started again.
				var ue *UnavailableError
				if errors.As(err, &ue) && ue.State != StatePaused && ue.State != StateSuspended && ue.State != StateQueued {
					out[i].Status, out[i].Why = session.Status{State: session.Lost}, err.Error()
					if changed != nil {
						changed(m, out[i].Status, false)
					}
					ses.c.say("lost: %s", err)
					return
				}
				select {
				case <-ctx.Done():
					// The deadline may cut the last poll short: report
					// what the last one that answered said.
					out[i].Status = lastGood
					out[i].TimedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
					switch {
					case out[i].TimedOut && lastGood.State != "":
						out[i].Err = "timed out while the agent was " + string(lastGood.State)
					case out[i].TimedOut:
						out[i].Err = "timed out; last: " + err.Error()
					case err == nil:
						out[i].Err = ctx.Err().Error()
					default:
						out[i].Err = err.Error()
					}
					return
				case <-time.After(every):
					if err != nil {
						ses.c.Guests().sshPool().Drop(m.Name) // reconnect next round
					}
				}
			}
		}()
	}
	wg.Wait()
	return out
}

func describe(st session.Status) string {
	switch st.State {
	case session.Failed:
		return fmt.Sprintf("failed with exit status %d", st.ExitCode)
	case session.Succeeded:
		return "succeeded"
	}
	return string(st.State)
}

// ReadTasks parses a tasks file: tasks separated by lines holding only
// "---"; each task's text is kept as written (inner blank lines too),
// without the separator's line breaks. Empty tasks are an error.
func ReadTasks(r io.Reader) ([][]byte, error) {
	var tasks [][]byte
	var cur bytes.Buffer
	flush := func() error {
		t := bytes.TrimRight(cur.Bytes(), "\n")
		t = bytes.TrimLeft(t, "\n")
		if len(bytes.TrimSpace(t)) == 0 {
			return fmt.Errorf("task %d is empty", len(tasks)+1)
		}
		tasks = append(tasks, append([]byte(nil), t...))
		cur.Reset()
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	lines := 0
	for sc.Scan() {
		lines++
		if strings.TrimRight(sc.Text(), " \t\r") == "---" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		cur.Write(sc.Bytes())
		cur.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if lines == 0 {
		return nil, errors.New("the tasks file is empty")
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return tasks, nil
}
