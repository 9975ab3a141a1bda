package fleet

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/session"
)

// WatchAgent streams m's agent snapshots to fn until ctx ends: one guest
// program on the kept SSH connection, printing when the session changes
// (and each second). A dropped connection is dialled again after a pause,
// so a watcher costs one handshake per connection, not one per refresh.
func (ses Sessions) WatchAgent(ctx context.Context, m *Machine, fn func(session.Status, error)) {
	pause := time.Second
	for ctx.Err() == nil {
		err := ses.watchOnce(ctx, m, fn)
		if ctx.Err() != nil {
			return
		}
		// A watch never ends well: the guest went away or the
		// connection broke. Say so, drop the connection and dial again.
		fn(session.Status{}, err)
		ses.c.Guests().sshPool().Drop(m.Name)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// minSnapshotGap is the least time between two snapshots passed on.
const minSnapshotGap = 100 * time.Millisecond

func (ses Sessions) watchOnce(ctx context.Context, m *Machine, fn func(session.Status, error)) error {
	r, err := ses.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := r.Run(ctx, guest.Cmd{Step: "watch the agent", Script: session.WatchScript(), Stdout: pw})
		pw.CloseWithError(err)
		done <- err
	}()
	// The guest program prints at most four snapshots a second; one that
	// prints faster (an agent with sudo can replace it) costs the host a
	// parse each, never a redraw each.
	var last time.Time
	rerr := session.ReadSnapshots(pr, func(st session.Status, err error) bool {
		if now := time.Now(); now.Sub(last) >= minSnapshotGap {
			last = now
			fn(st, err)
		}
		return ctx.Err() == nil
	})
	pr.CloseWithError(errors.New("watch ended"))
	err = <-done
	if rerr != nil && !errors.Is(rerr, io.ErrClosedPipe) {
		return rerr
	}
	if err == nil {
		err = errors.New("the agent watch ended")
	}
	return err
}

// Machines reports every machine of the fleet without asking the guests
// (no SSH): state, address, spend. Status adds the agents.
func (c *Controller) Machines(ctx context.Context) ([]MachineStatus, error) {
	st, _, err := c.machines(ctx)
	return st, err
}

// AllowHost lets machines reach pattern (fleet net allow, and the
// cockpit's answer to a refusal).
func (nt Net) AllowHost(ctx context.Context, names []string, all bool, pattern string) ([]*Machine, error) {
	if _, err := egress.ParsePattern(pattern); err != nil {
		return nil, err
	}
	return nt.ChangePolicy(ctx, names, all, func(p egress.Policy) (egress.Policy, error) { return p.WithAllowed(pattern) })
}

// RefusedPattern is the allowlist entry that would have let a refused
// connection through: the host, with its port unless it is 443.
func RefusedPattern(host string, port int) string {
	if port == 0 || port == 443 {
		return host
	}
	return host + ":" + strconv.Itoa(port)
}
