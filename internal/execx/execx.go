// Package execx is the one way agentfleet runs external commands (qemu-img,
// qemu-system, debootstrap, VBoxManage, ...). Every caller goes through a
// Runner so tests can swap in a fake and so every failure reads the same way:
// the command line that failed plus the tail of what it printed.
package execx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
)

// Cmd describes one external command. Name is looked up in PATH.
type Cmd struct {
	Name string
	Args []string
	Env  []string // extra KEY=VALUE pairs added to the inherited environment
	// Unset is a filter on the inherited environment: a variable it
	// returns true for is not passed on (Env is added after it).
	Unset  func(name string) bool
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer // optional live copy of stdout (output is captured regardless)
	Stderr io.Writer // optional live copy of stderr
	// StreamStdout sends stdout only to Stdout, uncaptured: for large
	// streams (a git pack) that must not sit in memory. Stderr is still
	// captured for the error message.
	StreamStdout bool
}

// String renders the command the way a user could paste it into a shell.
func (c Cmd) String() string {
	parts := make([]string, 0, len(c.Args)+1)
	parts = append(parts, ShellQuote(c.Name))
	for _, a := range c.Args {
		parts = append(parts, ShellQuote(a))
	}
	return strings.Join(parts, " ")
}

// Runner executes commands. It returns the combined output and, on failure,
// a *RunError.
type Runner interface {
	Run(ctx context.Context, c Cmd) ([]byte, error)
}

// RunError is returned for a command that could not start or exited non-zero.
type RunError struct {
	Cmd      Cmd
	Output   []byte // combined stdout and stderr
	ExitCode int    // -1 when the command did not run to an exit
	Err      error
}

// tailLines is how much output an error message carries: enough to see what
// went wrong without burying the message.
const tailLines = 12

func (e *RunError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Cmd.String(), e.Err)
	if t := Tail(e.Output, tailLines); t != "" {
		msg += "\n" + t
	}
	return msg
}

func (e *RunError) Unwrap() error { return e.Err }

// NotFoundError says a required program is not installed.
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s is not installed (not found in PATH)", e.Name)
}

// IsNotFound reports whether err says a program is missing.
func IsNotFound(err error) bool {
	var nf *NotFoundError
	return errors.As(err, &nf)
}

// Local runs commands on this machine.
type Local struct{}

// Run implements Runner.
func (Local) Run(ctx context.Context, c Cmd) ([]byte, error) {
	path, err := exec.LookPath(c.Name)
	if err != nil {
		return nil, &NotFoundError{Name: c.Name}
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 || c.Unset != nil {
		var env []string
		for _, kv := range cmd.Environ() {
			if name, _, _ := strings.Cut(kv, "="); c.Unset == nil || !c.Unset(name) {
				env = append(env, kv)
			}
		}
		cmd.Env = append(env, c.Env...)
	}
	cmd.Stdin = c.Stdin
	var out lockedBuffer
	cmd.Stdout = teeTo(&out, c.Stdout)
	if c.StreamStdout {
		cmd.Stdout = c.Stdout
	}
	cmd.Stderr = teeTo(&out, c.Stderr)
	err = cmd.Run()
	if err == nil {
		return out.Bytes(), nil
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return out.Bytes(), &RunError{Cmd: c, Output: out.Bytes(), ExitCode: code, Err: err}
}

func teeTo(buf io.Writer, extra io.Writer) io.Writer {
	if extra == nil {
		return buf
	}
	return io.MultiWriter(buf, extra)
}

// Tail returns the last n non-empty lines of out, trimmed.
func Tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	var keep []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// ShellQuote quotes s for a POSIX shell, leaving plain words readable.
func ShellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ShellJoin quotes each argument and joins them, producing a command string
// that a POSIX shell splits back into exactly args.
func ShellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = ShellQuote(a)
	}
	return strings.Join(q, " ")
}

// lockedBuffer lets stdout and stderr goroutines write into one buffer.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}
