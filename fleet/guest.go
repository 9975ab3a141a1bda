package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/crypto/ssh"
)

// Guests reaches machines: their state without the network, their kept
// SSH connection, the wait for a booting sshd, and the runner every guest
// command goes through.
type Guests struct{ c *Controller }

// Guests is the reach-a-machine concern of c.
func (c *Controller) Guests() Guests { return Guests{c} }

// Every command that reaches into a guest (exec, ssh, run, logs, wait,
// attach, collect, diff) comes through Connect. It first asks the driver
// what the machine is doing, which takes no network and answers at once,
// so a dead, stopped or paused machine gets its state and the fix instead
// of an SSH wait.

// UnavailableError is a machine that cannot be reached, in a state that
// says why. Its message names the machine once, the state and the fix.
type UnavailableError struct {
	Machine string
	State   string // StateDead, StateStopped or StatePaused
	Why     string
	Fix     string
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%s is %s: %s; %s", e.Machine, e.State, e.Why, e.Fix)
}

// connectTimeout bounds reaching a machine the driver says is running: a
// wedged guest is reported, not waited on forever.
const connectTimeout = 45 * time.Second

// availability checks m's state without touching the network.
func (g Guests) availability(ctx context.Context, m *Machine) error {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := g.c.Driver.Status(sctx, g.c.spec(m, vm.Seed{}))
	if err != nil {
		return fmt.Errorf("%s: ask %s for its state: %w", m.Name, g.c.Driver.Name(), err)
	}
	if st.Power == vm.PowerOff {
		// A scheduler's word is better than "its process exited".
		if p, ok, err := vm.PlacementOf(sctx, g.c.Driver, g.c.spec(m, vm.Seed{})); ok && err == nil {
			switch {
			case p.Queued:
				return &UnavailableError{m.Name, StateQueued, "its job " + p.Job + " waits in the queue (" + orNoReason(p.Reason) + ")", "fleet start " + m.Name + " waits for it"}
			case p.Ended && m.Desired == WantRunning:
				return &UnavailableError{m.Name, StateLost, "its job " + p.Job + " " + p.Phrase + ", and its disk went with it", "remove it with: fleet destroy " + m.Name}
			}
		}
	}
	return g.unavailable(m, st)
}

// unavailable turns a driver status into the error a user sees, or nil
// when the machine runs.
func (g Guests) unavailable(m *Machine, st vm.Status) error {
	fix := "start it with: fleet start " + m.Name
	switch {
	case st.Power == vm.PowerOn && st.Paused == vm.PausedDiskFull:
		return &UnavailableError{m.Name, StatePaused, "disk full (the file system holding " + m.Dir + " " + freeSpace(m.Dir) + ")",
			"free space there, then continue it with: fleet start " + m.Name}
	case st.Power == vm.PowerOn && st.Paused != "":
		return &UnavailableError{m.Name, StatePaused, "its guest is " + st.Paused, "continue it with: fleet start " + m.Name}
	case st.Power == vm.PowerOn:
		return nil
	case m.Desired == WantRunning:
		return &UnavailableError{m.Name, StateDead, "its " + g.c.Driver.Name() + " process exited", fix}
	case m.Desired == WantSuspended:
		return &UnavailableError{m.Name, StateSuspended, "its memory is saved in its folder", "resume it with: fleet resume " + m.Name}
	}
	return &UnavailableError{m.Name, StateStopped, "it is not running", fix}
}

// freeSpace describes the space left on dir's file system.
func freeSpace(dir string) string {
	var fs syscall.Statfs_t
	if syscall.Statfs(dir, &fs) != nil {
		return "is full"
	}
	free := fs.Bavail * uint64(fs.Bsize)
	return fmt.Sprintf("has %d MiB free of %d MiB", free>>20, (fs.Blocks*uint64(fs.Bsize))>>20)
}

// Connect returns the kept SSH connection to a running machine, or says at
// once why there is none.
func (g Guests) Connect(ctx context.Context, m *Machine) (*ssh.Client, error) {
	if err := g.availability(ctx, m); err != nil {
		return nil, err
	}
	if m.SSHAddr == "" {
		return nil, &UnavailableError{m.Name, StateStopped, "it has no SSH address recorded", "start it with: fleet start " + m.Name}
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	cl, err := g.dial(cctx, m)
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("%s does not answer SSH at %s although its %s runs: %w%s", m.Name, m.SSHAddr, g.c.Driver.Name(), err, g.consoleHint(m))
	}
	return cl, err
}

func (g Guests) dial(ctx context.Context, m *Machine) (*ssh.Client, error) {
	t, err := g.target(m)
	if err != nil {
		return nil, err
	}
	return g.sshPool().Get(ctx, m.Name, t)
}

// bootTimeout is how long a machine of arch may take to answer SSH.
func (g Guests) bootTimeout(arch vm.Arch) time.Duration {
	if g.c.BootTimeout == 0 { // no override: the driver's
		return g.c.Driver.Capabilities().BootTimeoutFor(arch)
	}
	if arch.Or() != vm.HostArch() && g.c.EmulatedBootTimeout > g.c.BootTimeout {
		return g.c.EmulatedBootTimeout
	}
	return g.c.BootTimeout
}

// waitSSH waits for a booting machine's sshd with the boot timeout, and
// gives up at once if the machine dies or pauses meanwhile (a full host
// disk pauses QEMU; waiting out the timeout would say nothing).
func (g Guests) waitSSH(ctx context.Context, m *Machine) error {
	wctx, cancel := context.WithTimeoutCause(ctx, g.bootTimeout(m.Arch), errors.New("boot timeout"))
	defer cancel()
	watch, stop := context.WithCancelCause(wctx)
	defer stop(nil)
	console := newConsoleWatch(m.Dir)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-watch.Done():
				return
			case <-t.C:
			}
			if console.poll(time.Now()); console.sshdDead(time.Now()) {
				stop(sshdFailedError(m))
				return
			}
			if err := g.availability(watch, m); err != nil {
				var ue *UnavailableError
				if errors.As(err, &ue) {
					stop(err)
					return
				}
			}
		}
	}()
	_, err := g.dial(watch, m)
	if cause := context.Cause(watch); err != nil && cause != nil && cause != context.Canceled {
		if errors.Is(cause, errSSHDFailed) {
			return cause
		}
		var ue *UnavailableError
		if errors.As(cause, &ue) {
			// The fix is the caller's to give: a spawn rolls back.
			return fmt.Errorf("%s went %s while booting: %s%s", m.Name, ue.State, ue.Why, g.consoleHint(m))
		}
	}
	if err != nil {
		return fmt.Errorf("%s: waiting for SSH: %w%s", m.Name, err, g.consoleHint(m))
	}
	return nil
}

// Named prefixes err with the machine's name, unless err already names
// it (a state error and a guest command's error do).
func Named(machine string, err error) error {
	var ue *UnavailableError
	var ge *guest.Error
	if err == nil || errors.As(err, &ue) || errors.As(err, &ge) && ge.Machine == machine {
		return err
	}
	return fmt.Errorf("%s: %w", machine, err)
}

func (g Guests) sshPool() *sshx.Pool {
	g.c.poolOnce.Do(func() { g.c.pool = sshx.NewPool() })
	return g.c.pool
}

// fleetKey loads the fleet's client key, creating it on first use.
func (g Guests) fleetKey(create bool) (ssh.Signer, string, error) {
	path := g.c.Layout.KeyFile(g.c.Fleet)
	if s, err := sshx.LoadSigner(path); err == nil {
		return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))), nil
	} else if !errors.Is(err, os.ErrNotExist) || !create {
		return nil, "", fmt.Errorf("fleet key: %w", err)
	}
	kp, err := sshx.NewKeyPair("agentfleet-" + g.c.Fleet)
	if err != nil {
		return nil, "", err
	}
	if err := WriteFileAtomic(path, kp.PrivatePEM, 0o600); err != nil {
		return nil, "", err
	}
	if err := WriteFileAtomic(path+layout.PublicKeySuffix, []byte(kp.AuthorizedKey+"\n"), 0o644); err != nil {
		return nil, "", err
	}
	s, err := sshx.LoadSigner(path)
	return s, kp.AuthorizedKey, err
}

// target describes how to SSH into m.
func (g Guests) target(m *Machine) (sshx.Target, error) {
	signer, _, err := g.fleetKey(false)
	if err != nil {
		return sshx.Target{}, err
	}
	hk, err := sshx.ParseAuthorizedKey(m.HostKey)
	if err != nil {
		return sshx.Target{}, fmt.Errorf("%s: pinned host key: %w", m.Name, err)
	}
	return sshx.Target{Addr: m.SSHAddr, User: GuestUser, Signer: signer, HostKey: hk}, nil
}

// consoleHint points at the serial log of a machine that failed to boot.
func (g Guests) consoleHint(m *Machine) string {
	return fmt.Sprintf(" (serial console: %s)", filepath.Join(m.Dir, layout.SerialFile))
}

// guestRunner is the one way the controller runs commands in m: over
// its kept connection, each error naming m and the step.
func (g Guests) guestRunner(ctx context.Context, m *Machine) (*guest.Runner, error) {
	cl, err := g.Connect(ctx, m)
	if err != nil {
		return nil, err
	}
	return guest.OverSSH(m.Name, cl), nil
}

// guestRun runs script on m as step with stdin, returning stdout; a
// non-zero exit is a *guest.Error carrying the end of its stderr. The
// host keeps at most bounded.Answer bytes of stdout (more is an error: no
// script of ours says that much).
func (g Guests) guestRun(ctx context.Context, m *Machine, step, script string, stdin io.Reader) ([]byte, error) {
	r, err := g.guestRunner(ctx, m)
	if err != nil {
		return nil, err
	}
	return r.Output(ctx, guest.Cmd{Step: step, Script: script, Stdin: stdin})
}
