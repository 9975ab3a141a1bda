package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"
)

func newSSHCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ssh VM [-- CMD...]",
		Short: "Open a shell in a machine (with a PTY), or run one command",
		Example: `  fleet ssh myproj-1
  fleet ssh myproj-1 -- sudo journalctl -b --no-pager | tail`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if d := cmd.ArgsLenAtDash(); d > 1 || (d < 0 && len(args) > 1) {
				return fmt.Errorf("name one machine, then the command after --")
			}
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Store().Load()
			if err != nil {
				return err
			}
			ms, err := c.Select(s, args[:1], false)
			if err != nil {
				return err
			}
			release, err := keepAwake(cmd, c, ms)
			if err != nil {
				return err
			}
			defer release()
			cl, err := c.Guests().Connect(cmd.Context(), ms[0])
			if err != nil {
				return err
			}
			if len(args) > 1 {
				err := guest.OverSSH(ms[0].Name, cl).Run(cmd.Context(), guest.Cmd{Step: "ssh", Script: execx.ShellJoin(args[1:]), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
				if code := guest.ExitCode(err); code > 0 {
					return exitError{code} // the command's own status, said by its stderr
				}
				return err
			}
			return interactiveShell(ms[0].Name, cl)
		},
	}
}

// interactiveShell runs a login shell with a PTY sized like the local
// terminal, in raw mode, following window size changes.
func interactiveShell(name string, cl *ssh.Client) error {
	return interactiveCommand(name, "ssh", cl, "", false)
}

// interactiveCommand runs command (a login shell when "") in machine name
// with a PTY: sized like the local terminal when stdin is one (raw mode,
// following window changes), or 80x24 with always (tmux needs a terminal
// even when a script drives it). It ends when the guest's side does: the
// keys a person types, Ctrl-C among them, are the guest's.
func interactiveCommand(name, step string, cl *ssh.Client, command string, always bool) error {
	c := guest.Cmd{Step: step, Script: command, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	fd := int(os.Stdin.Fd())
	tt := os.Getenv("TERM")
	if tt == "" || tt == "dumb" {
		tt = "xterm-256color"
	}
	if term.IsTerminal(fd) {
		w, h, _ := term.GetSize(fd)
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		resize, done := make(chan guest.Size, 1), make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				case <-winch:
				}
				if w, h, err := term.GetSize(fd); err == nil {
					select {
					case resize <- guest.Size{Width: w, Height: h}:
					case <-done:
						return
					}
				}
			}
		}()
		c.PTY = &guest.PTY{Term: tt, Width: w, Height: h, Echo: true, Resize: resize}
	} else if always {
		c.PTY = &guest.PTY{Term: tt, Width: 80, Height: 24}
	}
	// Not cancelled by a signal: the session is the person's to end.
	err := guest.OverSSH(name, cl).Run(context.Background(), c)
	if code := guest.ExitCode(err); code > 0 {
		return exitError{code}
	}
	return err
}

func newSSHConfigCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-config [VM...]",
		Short: "Print an OpenSSH config with pinned host keys for the fleet's machines",
		Long: `Prints one Host block per running machine. Host keys are checked against the
fleet's known_hosts (StrictHostKeyChecking yes), so ssh, scp, rsync -e and
editors' remote-SSH work without ever trusting an unknown key.`,
		Example: `  fleet ssh-config > ~/.ssh/fleet.conf && ssh -F ~/.ssh/fleet.conf myproj-1
  ssh -F <(fleet ssh-config) myproj-1 uptime
  rsync -a -e "ssh -F $(fleet ssh-config > /tmp/f.conf; echo /tmp/f.conf)" ./src myproj-1:`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.controller(cmd)
			if err != nil {
				return err
			}
			s, err := c.Store().Load()
			if err != nil {
				return err
			}
			ms, err := c.Select(s, args, len(args) == 0)
			if err != nil {
				return err
			}
			out, err := c.SSHConfig(s, ms)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
}
