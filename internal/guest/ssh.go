package guest

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// SSH is a Transport over an open SSH connection: each command is a new
// session on it, so many commands share one handshake.
func SSH(c *ssh.Client) Transport { return sshTransport{c} }

// OverSSH is a Runner for machine over c.
func OverSSH(machine string, c *ssh.Client) *Runner { return New(machine, SSH(c)) }

type sshTransport struct{ c *ssh.Client }

func (t sshTransport) Run(ctx context.Context, c Cmd) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	s, err := t.c.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open an SSH session: %w", err)
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = c.Stdin, c.Stdout, c.Stderr
	if p := c.PTY; p != nil {
		echo := uint32(0)
		if p.Echo {
			echo = 1
		}
		if err := s.RequestPty(p.Term, p.Height, p.Width, ssh.TerminalModes{ssh.ECHO: echo}); err != nil {
			return -1, fmt.Errorf("ask for a terminal: %w", err)
		}
	}
	if c.Script == "" {
		// No command: the login shell, reading stdin with or without a
		// terminal (fleet ssh VM < script.sh), as OpenSSH does.
		err = s.Shell()
	} else {
		err = s.Start(c.Script)
	}
	if err != nil {
		return -1, fmt.Errorf("start the command: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	var resize <-chan Size
	if c.PTY != nil {
		resize = c.PTY.Resize
	}
	for {
		select {
		case err = <-done:
			return exitStatus(err)
		case sz, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			_ = s.WindowChange(sz.Height, sz.Width)
		case <-ctx.Done():
			// Kill the guest's process, not only our end of it.
			_ = s.Signal(ssh.SIGKILL)
			s.Close()
			return -1, ctx.Err()
		}
	}
}

// exitStatus reads a finished session's status.
func exitStatus(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, errors.New("the command ended without an exit status (connection lost?)")
	}
	return -1, fmt.Errorf("the SSH session broke: %w", err)
}
