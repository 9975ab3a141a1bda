package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/go-hclog"
)

// Controller runs fleet operations for one fleet.
type Controller struct {
	Layout Layout
	Fleet  string
	Driver vm.Driver
	Log    hclog.Logger
	// Progress receives one-line, human-readable progress messages.
	Progress io.Writer
	// BootTimeout, if set, overrides the driver's Capabilities.BootTimeout.
	BootTimeout time.Duration
	// EmulatedBootTimeout, if longer, bounds it instead for machines of
	// another architecture than the host's, which always run emulated.
	EmulatedBootTimeout time.Duration
	// StopGrace is how long a guest gets to power off before it is killed.
	StopGrace time.Duration
	// Parallel limits concurrent clone+boot operations.
	Parallel int
	// BeforeBoot, if set, runs once input has been validated and machines
	// are about to boot (the CLI warns about slow software emulation here,
	// not on commands that fail validation).
	BeforeBoot func()
	// Runner runs host commands (git, rsync); nil means execx.Local.
	Runner execx.Runner
	// Self is the fleet binary the hypervisor runs as the egress and
	// credential proxies ("" means this executable).
	Self string
	// Getenv is where the host credential comes from (nil: os.Getenv).
	Getenv func(string) string

	pool     *sshx.Pool
	poolOnce sync.Once
	outMu    sync.Mutex
	credMu   sync.Mutex
	creds    map[string]credResult // by credential command

}

// Store returns the fleet's state store.
func (c *Controller) Store() Store { return Store{Layout: c.Layout, Fleet: c.Fleet} }

func (c *Controller) say(format string, args ...any) {
	if c.Progress == nil {
		return
	}
	// What is said often quotes a guest (a path, a branch, its stderr).
	line := termsafe.Text(fmt.Sprintf(format, args...))
	c.outMu.Lock()
	defer c.outMu.Unlock()
	fmt.Fprintln(c.Progress, line)
}

// Close releases kept SSH connections.
func (c *Controller) Close() {
	if c.pool != nil {
		c.pool.Close()
	}
}

// spec turns a machine record into a driver spec.
func (c *Controller) spec(m *Machine, seed vm.Seed) vm.Spec {
	s := vm.Spec{Name: m.Name, Dir: m.Dir, BaseImage: m.BaseImage, BaseImageSHA256: m.BaseImageSHA256, Arch: m.Arch, CPUs: m.CPUs, MemoryMiB: m.MemoryMiB, Seed: seed, Boot: m.Boot,
		HostWarm: m.HostWarm, HostPrebuild: m.HostPrebuild}
	if w := m.Workspace; w != nil && w.Mode == SyncShared {
		s.Share = &vm.Share{HostDir: w.Source, Writable: w.Writable}
	}
	return s
}

// lock takes the fleet's state lock, saying so while another fleet
// command holds it.
func (c *Controller) lock(ctx context.Context) (func(), error) {
	return c.Store().Lock(ctx, func() { c.say("waiting for another fleet command on %s to finish...", c.Fleet) })
}

// lockSelected takes the fleet lock, loads the state and selects the named
// machines (or all). When err is nil the caller must call unlock.
func (c *Controller) lockSelected(ctx context.Context, names []string, all bool) (unlock func(), s *State, ms []*Machine, err error) {
	unlock, err = c.lock(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if s, err = c.Store().Load(); err == nil {
		ms, err = c.Select(s, names, all)
	}
	if err != nil {
		unlock()
		return nil, nil, nil, err
	}
	return unlock, s, ms, nil
}

// Machine is the named machine's record, read from the state file (no
// lock: for a look, not a change).
func (c *Controller) Machine(name string) (*Machine, error) {
	s, err := c.Store().Load()
	if err != nil {
		return nil, err
	}
	ms, err := c.Select(s, []string{name}, false)
	if err != nil {
		return nil, err
	}
	return ms[0], nil
}

// Select resolves a user's machine argument (or --all) to records.
func (c *Controller) Select(s *State, names []string, all bool) ([]*Machine, error) {
	if all {
		if len(s.Machines) == 0 {
			return nil, fmt.Errorf("fleet %s has no machines", c.Fleet)
		}
		return append([]*Machine(nil), s.Machines...), nil
	}
	if len(names) == 0 {
		return nil, errors.New("name a machine or pass --all")
	}
	var out []*Machine
	for _, n := range names {
		m := s.Find(n)
		if m == nil {
			return nil, unknownMachine(c.Fleet, n, s)
		}
		out = append(out, m)
	}
	return out, nil
}

func unknownMachine(fleet, name string, s *State) error {
	var have []string
	for _, m := range s.Machines {
		have = append(have, m.Name)
	}
	if len(have) == 0 {
		return fmt.Errorf("unknown machine %q: fleet %s has no machines", name, fleet)
	}
	return fmt.Errorf("unknown machine %q in fleet %s (machines: %s)", name, fleet, strings.Join(have, ", "))
}

// cleanupTimeout bounds rollback and teardown, which run on a fresh context
// so that Ctrl-C (which cancelled the work) does not also cancel cleanup.
const cleanupTimeout = 2 * time.Minute

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "i-" + hex.EncodeToString(b)
}

type credResult struct {
	cred egress.Credential
	err  error
}

func (c *Controller) runner() execx.Runner {
	if c.Runner != nil {
		return c.Runner
	}
	return execx.Local{}
}
