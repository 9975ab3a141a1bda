package fleet

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// memDriver runs the machines named in on and measures them, recording
// the template RAM it was told of.
type memDriver struct {
	vm.Driver
	on    map[string]bool
	asked map[string]string // machine → template RAM file
}

func (*memDriver) Name() string { return "fake" }
func (d *memDriver) Status(_ context.Context, s vm.Spec) (vm.Status, error) {
	if d.on[s.Name] {
		return vm.Status{Power: vm.PowerOn}, nil
	}
	return vm.Status{Power: vm.PowerOff}, nil
}
func (d *memDriver) HostMemory(s vm.Spec) (vm.HostMemory, error) {
	d.asked[s.Name] = ""
	if s.Template != nil {
		d.asked[s.Name] = s.Template.Memory
	}
	return vm.HostMemory{Unique: 64 << 20, Shared: 188 << 20}, nil
}

func TestMachinesShowTheirHostMemory(t *testing.T) {
	ctx := context.Background()
	tpl := images.Template{Dir: filepath.Join(t.TempDir(), "warm", "k")}
	d := &memDriver{on: map[string]bool{"p-1": true, "p-2": true}, asked: map[string]string{}}
	c := &Controller{Layout: Layout{Root: t.TempDir()}, Fleet: "p", Driver: d}
	ms := []*Machine{
		{Name: "p-1", BaseImage: tpl.Disk(), Dir: t.TempDir()},          // a warm clone
		{Name: "p-2", BaseImage: "/img/7/disk.qcow2", Dir: t.TempDir()}, // booted cold
		{Name: "p-3", BaseImage: tpl.Disk(), Dir: t.TempDir(), Desired: WantStopped},
	}
	if err := c.Store().Update(ctx, func(s *State) error { s.Machines = ms; return nil }); err != nil {
		t.Fatal(err)
	}
	st, err := c.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.asked["p-1"] != tpl.Memory() {
		t.Errorf("a warm clone is measured against %q, want its template's RAM %q", d.asked["p-1"], tpl.Memory())
	}
	if m, ok := d.asked["p-2"]; !ok || m != "" {
		t.Errorf("a cold machine: asked %v, template %q", ok, m)
	}
	if _, ok := d.asked["p-3"]; ok {
		t.Error("a stopped machine was measured")
	}
	b, _ := json.Marshal(st)
	js := string(b)
	for _, want := range []string{`"memory":{"unique_bytes":67108864,"shared_bytes":197132288,"template_shared_bytes":0,"guest_written_bytes":0,"hypervisor_bytes":0}`} {
		if strings.Count(js, want) != 2 {
			t.Errorf("JSON: want %s on both running machines: %s", want, js)
		}
	}
	if st[2].Memory != nil {
		t.Errorf("a stopped machine has memory: %+v", st[2].Memory)
	}
	// A driver that cannot measure leaves it out.
	c.Driver = runningDriver{}
	if st, err := c.Machines(ctx); err != nil || st[0].Memory != nil {
		t.Errorf("%v %+v", err, st)
	}
}
