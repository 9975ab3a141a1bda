package fleet

import (
	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// HostMemory is how much host memory m's hypervisor process holds, read
// from the host (no guest is asked), for a machine whose process runs.
// A warm clone's disk links to its template's, which says where the
// template's RAM is: what the clone shares with its siblings.
func (g Guests) HostMemory(m *Machine) (*vm.HostMemory, error) {
	s := g.c.spec(m, vm.Seed{})
	if t, ok := images.TemplateOfDisk(m.BaseImage); ok {
		tv := t.VM()
		s.Template = &tv
	}
	hm, err := vm.HostMemoryOf(g.c.Driver, s)
	if err != nil {
		return nil, err
	}
	return &hm, nil
}
