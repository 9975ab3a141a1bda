package fleet

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/agentfleet/agentfleet/internal/vm"
)

// compactDriver compacts every machine it is given into process 1000+n,
// except those it says are busy.
type compactDriver struct {
	fakeDriver
	mu    sync.Mutex
	busy  map[string]bool
	moved []string
}

func (d *compactDriver) Compact(ctx context.Context, s vm.Spec) (vm.Compacted, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[s.Name] {
		return vm.Compacted{}, fmt.Errorf("compact %s: %w (1 TCP)", s.Name, vm.ErrBusy)
	}
	d.moved = append(d.moved, s.Name)
	return vm.Compacted{PID: 1000 + len(d.moved), KeptBytes: 16 << 20}, nil
}

func (d *compactDriver) HostMemory(s vm.Spec) (vm.HostMemory, error) {
	return vm.HostMemory{}, vm.ErrNotSupported
}

// Only running machines move; a busy one, a suspended one, one a command
// holds awake are left as they are with the reason, and the record keeps
// the new process of each one moved.
func TestCompactMovesRunningMachinesAndSaysWhyItLeftOthers(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	d := &compactDriver{busy: map[string]bool{"p-2": true}}
	c := &Controller{Layout: l, Fleet: "p", Driver: d}
	var ms []*Machine
	for i, want := range []Desired{WantRunning, WantRunning, WantSuspended, WantRunning, WantStopped} {
		name := fmt.Sprintf("p-%d", i+1)
		dir := l.MachineDir("p", name)
		os.MkdirAll(dir, 0o700)
		m := &Machine{Name: name, Index: i + 1, Dir: dir, Desired: want}
		if want == WantRunning {
			m.PID = 100 + i
		}
		ms = append(ms, m)
	}
	if err := c.Store().Save(&State{Version: stateVersion, Fleet: "p", Machines: ms}); err != nil {
		t.Fatal(err)
	}
	release, err := holdAwake(context.Background(), ms[3]) // p-4: a command uses it
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	res, err := ParkingOf(c).Compact(context.Background(), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	why := map[string]string{}
	for _, r := range res {
		why[r.Name] = r.Skipped
	}
	for name, want := range map[string]string{"p-1": "", "p-2": "connections open", "p-3": "suspended", "p-4": "in use", "p-5": "not running"} {
		if got := why[name]; want == "" && got != "" || !strings.Contains(got, want) {
			t.Errorf("%s: skipped %q, want %q", name, got, want)
		}
	}
	if fmt.Sprint(d.moved) != "[p-1]" {
		t.Errorf("moved %v, want only p-1", d.moved)
	}
	s, err := c.Store().Load()
	if err != nil {
		t.Fatal(err)
	}
	if s.Find("p-1").PID != 1001 || s.Find("p-2").PID != 101 {
		t.Errorf("recorded processes %d and %d, want the new 1001 and the old 101", s.Find("p-1").PID, s.Find("p-2").PID)
	}
}

func TestCompactOnADriverThatCannot(t *testing.T) {
	c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "p", Driver: fakeDriver{}}
	if _, err := ParkingOf(c).Compact(context.Background(), nil, true); err == nil || !strings.Contains(err.Error(), "fake driver cannot compact") {
		t.Errorf("err = %v", err)
	}
}
