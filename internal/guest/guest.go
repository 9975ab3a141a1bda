// Package guest is the one way agentfleet runs a command in a guest. A
// Runner names one machine and runs each command over a Transport (the
// machine's SSH connection, or the hypervisor's guest agent) as one step:
// a command that exits 0 is nil, anything else is an *Error that names the
// machine, the step, the exit code or why there is none, and the cleaned
// end of what the command wrote to stderr.
package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
)

// Cmd is one command for a guest.
type Cmd struct {
	// Step is a short label for what the command does ("unpack the
	// workspace"), said in its error.
	Step string
	// Script is a shell command line; "" is a login shell (reading stdin
	// when there is no PTY).
	Script string
	Stdin  io.Reader
	// Stdout gets the command's output (nil discards it).
	Stdout io.Writer
	// Stderr, if set, also gets the command's stderr as it comes; the
	// runner keeps its end for the error either way.
	Stderr io.Writer
	// PTY asks for a terminal (interactive use; SSH only).
	PTY *PTY
}

// PTY is the terminal a command runs on.
type PTY struct {
	Term          string // TERM, e.g. "xterm-256color"
	Width, Height int
	Echo          bool
	// Resize, if set, carries the local terminal's new sizes until the
	// command ends.
	Resize <-chan Size
}

// Size is a terminal's size in characters.
type Size struct{ Width, Height int }

// Transport runs one command and reports its exit status (the Runner
// sets Stdout and Stderr). err is non-nil
// only when there is no status: the command could not be started, or the
// connection broke or was cancelled before it ended.
type Transport interface {
	Run(ctx context.Context, c Cmd) (code int, err error)
}

// Runner runs commands in one machine.
type Runner struct {
	Machine string
	T       Transport
}

// New returns a Runner for machine over t.
func New(machine string, t Transport) *Runner { return &Runner{Machine: machine, T: t} }

// An error quotes the last stderrLines lines of stderr, at most
// quoteMax bytes of them: enough to say what went wrong on one line.
const (
	stderrLines = 3
	quoteMax    = 2048
)

// Run runs c: nil when it exits 0, else an *Error.
func (r *Runner) Run(ctx context.Context, c Cmd) error {
	tail := bounded.NewTail(bounded.Stderr)
	if c.Stderr != nil {
		c.Stderr = io.MultiWriter(tail, c.Stderr) // the tail first: it never fails a write
	} else {
		c.Stderr = tail
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	code, err := r.T.Run(ctx, c)
	if err == nil && code == 0 {
		return nil
	}
	e := &Error{Machine: r.Machine, Step: c.Step, Code: code, Stderr: cleanTail(tail.Bytes()), Err: err}
	if err != nil {
		e.Code = -1
	}
	return e
}

// Output runs c and returns what it printed. The host keeps at most
// bounded.Answer bytes: past that the answer is wrong whatever follows,
// so the command is stopped and the error wraps bounded.ErrTooLong. On a
// non-zero exit the output so far comes back with the error.
func (r *Runner) Output(ctx context.Context, c Cmd) ([]byte, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := &answer{Buffer: bounded.NewBuffer(bounded.Answer), over: cancel}
	c.Stdout = out
	err := r.Run(rctx, c)
	if terr := out.Err(); terr != nil {
		return nil, &Error{Machine: r.Machine, Step: c.Step, Code: -1, Err: fmt.Errorf("the guest's answer: %w", terr)}
	}
	return out.Bytes(), err
}

// answer is a bounded.Buffer that calls over once it has dropped bytes.
type answer struct {
	*bounded.Buffer
	over func()
}

func (a *answer) Write(p []byte) (int, error) {
	n, err := a.Buffer.Write(p)
	if a.Truncated() {
		a.over()
	}
	return n, err
}

// Error is a guest command that did not exit 0.
type Error struct {
	Machine string
	Step    string
	// Code is the command's exit status, or -1 when it has none (Err).
	Code int
	// Stderr is the end of the command's stderr, one line, safe for a
	// terminal.
	Stderr string
	// Err says why there is no exit status: the transport could not run
	// the command or broke meanwhile, ctx ended, or the answer was too
	// long. nil when the command exited non-zero.
	Err error
}

// Error is one line: "<machine>: <step>: exit N: <stderr>", or the
// transport's failure in place of the exit.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Machine != "" {
		b.WriteString(termsafe.Line(e.Machine) + ": ")
	}
	if e.Step != "" {
		b.WriteString(e.Step + ": ")
	}
	if e.Err != nil {
		// A transport's error may quote the guest (the guest agent's does).
		b.WriteString(termsafe.Line(e.Err.Error()))
	} else {
		fmt.Fprintf(&b, "exit %d", e.Code)
	}
	if e.Stderr != "" {
		b.WriteString(": " + e.Stderr)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Exited reports whether the command ran to an exit status (non-zero);
// false means the transport failed.
func (e *Error) Exited() bool { return e.Err == nil }

// ExitCode is the exit status err reports: 0 for nil, the command's
// status for an exit, -1 when there is none (a transport failure or any
// other error).
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) && e.Exited() {
		return e.Code
	}
	return -1
}

// IsExit reports whether err is a guest command that exited with code.
func IsExit(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Exited() && e.Code == code
}

// cleanTail is the last lines of stderr as one line a terminal shows as
// text.
func cleanTail(stderr []byte) string {
	cut := false
	if len(stderr) > quoteMax*2 {
		stderr = stderr[len(stderr)-quoteMax*2:] // Tail need not split all of it
	}
	t := execx.Tail(stderr, stderrLines)
	if len(t) > quoteMax {
		t, cut = t[len(t)-quoteMax:], true
	}
	if t == "" {
		return ""
	}
	lines := strings.Split(t, "\n")
	for i, l := range lines {
		lines[i] = termsafe.Line(strings.TrimSpace(l))
	}
	s := strings.Join(lines, "; ")
	if cut {
		s = "…" + s
	}
	return s
}
