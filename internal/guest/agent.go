package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// GuestAgent is a hypervisor's host-only channel into a guest (QEMU's
// guest agent): it runs a script as root with no network.
type GuestAgent interface {
	GuestRun(ctx context.Context, s vm.Spec, script string) (string, error)
}

// Agent is a Transport over a's channel into the machine s. It takes no
// stdin and no terminal, and has no stderr of its own: a failure's text
// is in the agent's error.
func Agent(a GuestAgent, s vm.Spec) Transport { return agentTransport{a, s} }

// OverAgent is a Runner for the machine s over a.
func OverAgent(a GuestAgent, s vm.Spec) *Runner { return New(s.Name, Agent(a, s)) }

type agentTransport struct {
	a GuestAgent
	s vm.Spec
}

// exitCoder is an error that carries a process's exit status, as
// os/exec's and x/crypto/ssh's do.
type exitCoder interface{ ExitCode() int }
type exitStatuser interface{ ExitStatus() int }

func (t agentTransport) Run(ctx context.Context, c Cmd) (int, error) {
	if c.Stdin != nil || c.PTY != nil {
		return -1, errors.New("the guest agent takes no input or terminal")
	}
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	out, err := t.a.GuestRun(ctx, t.s, c.Script)
	if _, werr := io.WriteString(c.Stdout, out); werr != nil && err == nil {
		return -1, fmt.Errorf("read the guest agent's answer: %w", werr)
	}
	if err == nil {
		return 0, nil
	}
	// An agent whose error says the exit status reports an exit (its
	// text stands for the stderr); any other error is the channel's.
	code := -1
	var ec exitCoder
	var es exitStatuser
	switch {
	case errors.As(err, &ec):
		code = ec.ExitCode()
	case errors.As(err, &es):
		code = es.ExitStatus()
	}
	// The Error names the machine: a driver's error that does too is
	// said without it.
	msg := strings.TrimPrefix(err.Error(), t.s.Name+": ")
	if code > 0 {
		_, _ = io.WriteString(c.Stderr, msg)
		return code, nil
	}
	return -1, &agentError{msg: msg, err: err}
}

// agentError is the agent's error said without the machine's name.
type agentError struct {
	msg string
	err error
}

func (e *agentError) Error() string { return e.msg }
func (e *agentError) Unwrap() error { return e.err }
