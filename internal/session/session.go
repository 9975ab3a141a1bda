// Package session runs one agent per VM in tmux, so it outlives the fleet
// command, a dropped connection and a sleeping host. Everything of a
// session lives in the agent's ~/.fleet/session: the task (uploaded as
// data, never spliced into a command), run.sh (made here from the
// project's profile, never from the task), the log, the start time and,
// at the end, the exit status.
//
// The scripts are made by pure functions; the fleet package runs them
// over SSH.
package session

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/agentfleet/agentfleet/internal/execx"
)

// Dir is the session folder in the agent's home.
const Dir = ".fleet/session"

// TmuxSession is the tmux session name (one agent per VM).
const TmuxSession = "fleet"

// TaskVia says how a profile's command gets the task.
type TaskVia string

const (
	TaskStdin TaskVia = "stdin" // the task file is the command's stdin
	TaskFile  TaskVia = "file"  // {task_file} in the command is the task file's path
)

// Profile is how to run one kind of agent.
type Profile struct {
	Name    string
	Command []string // argv; "{task_file}" is replaced by the task file's path
	Task    TaskVia
	// ClaudeStream says the output is Claude Code's stream-json (rendered
	// by Render, and read for turns and cost).
	ClaudeStream bool
	// Continue are the arguments that make Command continue the last
	// conversation in /workspace instead of starting one (fleet fork
	// --task); none: it cannot.
	Continue []string
}

// Continuing is p continuing its last conversation, or an error when p
// cannot.
func (p Profile) Continuing() (Profile, error) {
	if len(p.Continue) == 0 {
		return p, fmt.Errorf("the %s profile cannot continue a conversation (give it continue = [...] in fleet.hcl)", p.Name)
	}
	q := p
	q.Command = append(append([]string(nil), p.Command...), p.Continue...)
	q.Continue = nil
	return q, nil
}

// Claude is the default profile: Claude Code headless as agent in
// /workspace, permissions skipped (the VM is the sandbox), the task on
// stdin so it arrives byte for byte.
var Claude = Profile{
	Name:         "claude",
	Command:      []string{"claude", "--dangerously-skip-permissions", "-p", "--output-format", "stream-json", "--verbose"},
	Task:         TaskStdin,
	ClaudeStream: true,
	Continue:     []string{"--continue"},
}

// ClaudeInteractive is Claude Code's own interface in the tmux session
// (fleet attach), the task as its first prompt.
// script(1) gives it a terminal of its own behind the log's tee.
var ClaudeInteractive = Profile{
	Name:    "claude-interactive",
	Command: []string{"script", "-qfec", `exec claude --dangerously-skip-permissions "$(cat {task_file})"`, "/dev/null"},
	Task:    TaskFile,
}

// Validate checks a profile from fleet.hcl.
func (p Profile) Validate() error {
	if len(p.Command) == 0 || p.Command[0] == "" {
		return fmt.Errorf("profile %q: command is empty", p.Name)
	}
	switch p.Task {
	case TaskStdin:
	case TaskFile:
		found := false
		for _, a := range p.Command {
			found = found || strings.Contains(a, "{task_file}")
		}
		if !found {
			return fmt.Errorf("profile %q: task = \"file\" needs {task_file} in its command", p.Name)
		}
	default:
		return fmt.Errorf("profile %q: task must be \"stdin\" or \"file\", got %q", p.Name, p.Task)
	}
	return nil
}

// Credentials are the host variables a session may get. They reach the
// session's environment only (through the tmux server, never a command
// line, a file or a log).
var Credentials = []string{"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"}

// RunScript is run.sh: go to /workspace, run the setup commands one by
// one (each in its own sh -c; the first that fails stops the run with its
// status), then the agent with its task, all output to the log; the exit
// status goes to the exit file last, atomically, and marks the end.
func RunScript(p Profile, setup []string) string {
	words := make([]string, len(p.Command))
	for i, a := range p.Command {
		words[i] = execx.ShellQuote(a)
		if strings.Contains(a, "{task_file}") {
			// Single-quoted, with the path spliced in as "$d/task".
			q := "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
			words[i] = strings.ReplaceAll(q, "{task_file}", `'"$d/task"'`)
		}
	}
	cmd := strings.Join(words, " ")
	if p.Task == TaskStdin {
		cmd += ` <"$d/task"`
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString("d=$HOME/" + Dir + "\n")
	b.WriteString("echo $$ >\"$d/pid\"\n")
	b.WriteString("date +%s >\"$d/started\"\n")
	b.WriteString("cd /workspace 2>/dev/null || cd\n")
	b.WriteString("run() {\n")
	for _, step := range setup {
		if step == "" {
			continue
		}
		fmt.Fprintf(&b, "  echo '== fleet: setup: '%s\n", execx.ShellQuote(step))
		fmt.Fprintf(&b, "  sh -c %s </dev/null || { s=$?; echo \"== fleet: setup failed with exit status $s\"; return $s; }\n", execx.ShellQuote(step))
	}
	fmt.Fprintf(&b, "  %s\n", cmd)
	b.WriteString("}\n")
	// Output goes to the log and to the tmux pane (what attach shows);
	// the status travels in a file since a pipeline loses it.
	b.WriteString("{ run; echo $? >\"$d/rc\"; } 2>&1 | tee -a \"$d/log\"\n")
	b.WriteString("s=$(cat \"$d/rc\" 2>/dev/null || echo 255)\n")
	b.WriteString("echo \"== fleet: agent exited with status $s\" >>\"$d/log\"\n")
	b.WriteString("echo $s >\"$d/exit.tmp\" && mv \"$d/exit.tmp\" \"$d/exit\"\n")
	return b.String()
}

// LaunchScript starts a session in one exec (each costs a fraction of a
// second in a guest under emulation): it empties the session folder (a
// new session replaces the last one), stores the task and run.sh byte
// for byte, installs the status hook the image's agent settings call, and
// starts run.sh in tmux. Its stdin is LaunchInput's. Credentials come
// last, as NAME=VALUE lines: exported in this shell only, they pass into
// the tmux server this command starts and from there into the session,
// and are on no command line and in no file.
func LaunchScript() string {
	return `set -e
tmux kill-server 2>/dev/null || true
d=$HOME/` + Dir + `
rm -rf "$d" && mkdir -p "$d" && chmod 700 "$d"
read -r tlen rlen
case "$tlen:$rlen" in
  *[!0-9:]*|:*|*:) echo "fleet: the session's input has no lengths" >&2; exit 2 ;;
esac
# head -c reads no further than its count, so the next part stays.
head -c "$tlen" >"$d/task"
head -c "$rlen" >"$d/run.sh"
# The end mark proves both counts were read exactly: input that ended
# early, or a head that read past its count, leaves something else here.
IFS= read -r mark || true
[ "$mark" = ` + launchEnd + ` ] || { echo "fleet: the session's input was cut short" >&2; rm -f "$d/run.sh"; exit 2; }
chmod 700 "$d/run.sh"
` + installHook + `while IFS= read -r kv; do
  case "$kv" in ANTHROPIC_API_KEY=*|CLAUDE_CODE_OAUTH_TOKEN=*) export "$kv" ;; esac
done
tmux new-session -d -s ` + TmuxSession + ` -x 200 -y 50 "$d/run.sh"
# Return once run.sh has written its pid: from then on a missing process
# means the agent is gone.
i=0
while [ ! -f "$d/pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
`
}

// launchEnd follows run.sh in LaunchInput.
const launchEnd = "FLEET-LAUNCH-END"

// installHook writes the status hook, replaced whole.
const installHook = `cat >"$HOME/` + HookFile + `.tmp" <<'FLEET_HOOK_END'
` + hookProgram + `FLEET_HOOK_END
chmod 755 "$HOME/` + HookFile + `.tmp" && mv "$HOME/` + HookFile + `.tmp" "$HOME/` + HookFile + `"
`

// LaunchInput is LaunchScript's stdin: the task's and run.sh's lengths on
// a line, the two byte for byte, an end mark line, then CredentialInput's
// lines.
func LaunchInput(task []byte, runScript string, creds []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d %d\n", len(task), len(runScript))
	b.Write(task)
	b.WriteString(runScript)
	b.WriteString(launchEnd + "\n")
	b.Write(creds)
	return b.Bytes()
}

// CredentialInput renders the credentials present in env for LaunchInput.
func CredentialInput(getenv func(string) string) ([]byte, error) {
	var b bytes.Buffer
	for _, k := range Credentials {
		v := getenv(k)
		if v == "" {
			continue
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return nil, fmt.Errorf("%s contains a line break", k)
		}
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	return b.Bytes(), nil
}

// KillScript ends the session, recording 137 if it had not ended.
func KillScript() string {
	return `d=$HOME/` + Dir + `
[ -f "$d/task" ] || { echo "no session" >&2; exit 3; }
tmux kill-server 2>/dev/null || true
if [ ! -f "$d/exit" ]; then
  echo "== fleet: killed" >>"$d/log"
  echo 137 >"$d/exit"
fi
`
}

// LogsScript prints the log; with follow, until the session ends.
func LogsScript(follow bool) string {
	s := `d=$HOME/` + Dir + `
[ -f "$d/task" ] || { echo "no session has run on this machine" >&2; exit 3; }
`
	if !follow {
		return s + `cat "$d/log" 2>/dev/null; true` + "\n"
	}
	return s + `while [ ! -f "$d/pid" ] && [ ! -f "$d/exit" ]; do sleep 0.2; done
touch "$d/log"
if [ -f "$d/exit" ]; then cat "$d/log"; else exec tail -n +1 -f --pid="$(cat "$d/pid")" "$d/log"; fi
`
}

// State is an agent's state on one machine.
type State string

const (
	Idle      State = "idle"    // no session has run
	Working   State = "working" // the agent runs
	Waiting   State = "waiting" // the agent runs and waits for input (its hooks say)
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Lost      State = "lost" // no exit status, and its process is gone (the VM was reset)
)

// Live says the agent's process runs.
func (s State) Live() bool { return s == Working || s == Waiting }

// Status is what a snapshot of the session says.
type Status struct {
	State      State `json:"state"`
	ExitCode   int   `json:"exit_code,omitempty"`
	ElapsedSec int64 `json:"elapsed_sec,omitempty"`
	// Turns and CostUSD are what a Claude agent's own result line says
	// (the credential proxy's count is the one budgets use).
	Turns   int     `json:"turns,omitempty"`
	CostUSD float64 `json:"cost_usd,omitempty"`
	// From the agent's hooks: its last tool, and what it waits for.
	Tool    string `json:"last_tool,omitempty"`
	Message string `json:"message,omitempty"`
	// LastLine is the log's last line, rendered and cleaned.
	LastLine string `json:"last_line,omitempty"`
	// Commits and changed files since the start (git workspaces, watched
	// sessions only).
	Commits *int `json:"commits,omitempty"`
	Files   *int `json:"changed_files,omitempty"`
}
