package cockpit

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/agentfleet/agentfleet/fleet"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// fakeDriver is a hypervisor with no VMs: every machine is off, and it
// records what the controller asked of it. stopErr is Stop's answer.
type fakeDriver struct {
	vm.Driver
	mu      sync.Mutex
	calls   []string
	stopErr error
	// stopping, if set, is told when Stop starts, and Stop then waits for
	// release (or its context).
	stopping, release chan struct{}
}

func (d *fakeDriver) Name() string                  { return "fake" }
func (d *fakeDriver) Capabilities() vm.Capabilities { return vm.Capabilities{} }
func (d *fakeDriver) Status(context.Context, vm.Spec) (vm.Status, error) {
	return vm.Status{Power: vm.PowerOff}, nil
}

func (d *fakeDriver) Stop(ctx context.Context, s vm.Spec, _ time.Duration) error {
	if d.stopping != nil {
		d.stopping <- struct{}{}
		select {
		case <-d.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, "stop "+s.Name)
	return d.stopErr
}

func (d *fakeDriver) called() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

// newFakeFleet is fleet f with the named machines, on d; no VM boots.
func newFakeFleet(t *testing.T, root, f string, d vm.Driver, names ...string) *fleet.Controller {
	t.Helper()
	c := &fleet.Controller{Layout: fleet.Layout{Root: root}, Fleet: f, Driver: d}
	if err := os.MkdirAll(c.Layout.FleetDir(f), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := c.Store().Load()
	if err != nil {
		t.Fatal(err)
	}
	s.Driver = d.Name()
	for i, n := range names {
		dir := c.Layout.MachineDir(f, n)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		s.Machines = append(s.Machines, &fleet.Machine{Name: n, Index: i + 1, Dir: dir, CPUs: 1, MemoryMiB: 512, Desired: fleet.WantRunning})
	}
	if err := c.Store().Save(s); err != nil {
		t.Fatal(err)
	}
	return c
}
