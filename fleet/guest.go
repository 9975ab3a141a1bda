package fleet

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/vm"
	"golang.org/x/crypto/ssh"
)

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

// StatePaused is a machine whose hypervisor runs but whose guest does not.
const StatePaused = "paused"

// connectTimeout bounds reaching a machine the driver says is running: a
// wedged guest is reported, not waited on forever.
const connectTimeout = 45 * time.Second

// availability checks m's state without touching the network.
func (c *Controller) availability(ctx context.Context, m *Machine) error {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := c.Driver.Status(sctx, c.spec(m, vm.Seed{}))
	if err != nil {
		return fmt.Errorf("%s: ask %s for its state: %w", m.Name, c.Driver.Name(), err)
	}
	return c.unavailable(m, st)
}

// unavailable turns a driver status into the error a user sees, or nil
// when the machine runs.
func (c *Controller) unavailable(m *Machine, st vm.Status) error {
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
		return &UnavailableError{m.Name, StateDead, "its " + c.Driver.Name() + " process exited", fix}
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
func (c *Controller) Connect(ctx context.Context, m *Machine) (*ssh.Client, error) {
	if err := c.availability(ctx, m); err != nil {
		return nil, err
	}
	if m.SSHAddr == "" {
		return nil, &UnavailableError{m.Name, StateStopped, "it has no SSH address recorded", "start it with: fleet start " + m.Name}
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	cl, err := c.dial(cctx, m)
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("%s does not answer SSH at %s although its %s runs: %w%s", m.Name, m.SSHAddr, c.Driver.Name(), err, c.consoleHint(m))
	}
	return cl, err
}

func (c *Controller) dial(ctx context.Context, m *Machine) (*ssh.Client, error) {
	t, err := c.target(m)
	if err != nil {
		return nil, err
	}
	return c.sshPool().Get(ctx, m.Name, t)
}

// bootTimeout is how long a machine of arch may take to answer SSH.
func (c *Controller) bootTimeout(arch vm.Arch) time.Duration {
	if c.BootTimeout == 0 { // no override: the driver's
		return c.Driver.Capabilities().BootTimeoutFor(arch)
	}
	if arch.Or() != vm.HostArch() && c.EmulatedBootTimeout > c.BootTimeout {
		return c.EmulatedBootTimeout
	}
	return c.BootTimeout
}

// waitSSH waits for a booting machine's sshd with the boot timeout, and
// gives up at once if the machine dies or pauses meanwhile (a full host
// disk pauses QEMU; waiting out the timeout would say nothing).
func (c *Controller) waitSSH(ctx context.Context, m *Machine) error {
	wctx, cancel := context.WithTimeoutCause(ctx, c.bootTimeout(m.Arch), errors.New("boot timeout"))
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
			if err := c.availability(watch, m); err != nil {
				var ue *UnavailableError
				if errors.As(err, &ue) {
					stop(err)
					return
				}
			}
		}
	}()
	_, err := c.dial(watch, m)
	if cause := context.Cause(watch); err != nil && cause != nil && cause != context.Canceled {
		if errors.Is(cause, errSSHDFailed) {
			return cause
		}
		var ue *UnavailableError
		if errors.As(cause, &ue) {
			// The fix is the caller's to give: a spawn rolls back.
			return fmt.Errorf("%s went %s while booting: %s%s", m.Name, ue.State, ue.Why, c.consoleHint(m))
		}
	}
	if err != nil {
		return fmt.Errorf("%s: waiting for SSH: %w%s", m.Name, err, c.consoleHint(m))
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
