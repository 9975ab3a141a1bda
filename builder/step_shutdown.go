package builder

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/vm/qemu"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepShutdown powers the provisioned build VM off gracefully, so its disk
// is consistent, and passes that disk on for conversion.
//
// Reads "build_guest"; skipped on a cache hit. Writes "build_disk" (the
// VM's qcow2 overlay, flattened by StepConvert). No cleanup: the VM
// belongs to StepBootSource.
type StepShutdown struct{}

func (s *StepShutdown) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	g := state.Get("build_guest").(*guest)
	cfg.say("shutting the build VM down...")
	if err := g.shutdown(ctx); err != nil {
		return halt(state, fmt.Errorf("shut down build VM: %w", err))
	}
	state.Put("build_disk", filepath.Join(g.spec.Dir, qemu.DiskFile))
	return multistep.ActionContinue
}

func (s *StepShutdown) Cleanup(multistep.StateBag) {}
