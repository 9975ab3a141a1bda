package builder

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepConvert writes the store's disk: a standalone qcow2 made from the
// assembled raw disk (mirror sources) or the build VM's overlay (cloud
// sources, flattened). It is sparse but uncompressed, since every clone
// reads through it and decompression would slow every boot; the exported
// copy is the compressed one.
//
// Reads "config", "raw" or "build_disk", "workdir"; skipped on a cache
// hit. Writes "qcow2". Cleanup: files live in the workdir.
type StepConvert struct{}

func (s *StepConvert) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	out := filepath.Join(state.Get("workdir").(string), layout.ImageDisk)
	var args []string
	if raw, ok := state.GetOk("raw"); ok {
		args = ConvertArgs("raw", raw.(string), out, false)
	} else {
		args = ConvertArgs("qcow2", state.Get("build_disk").(string), out, false)
	}
	if _, err := cfg.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: args}); err != nil {
		return halt(state, fmt.Errorf("convert to qcow2: %w", err))
	}
	state.Put("qcow2", out)
	return multistep.ActionContinue
}

func (s *StepConvert) Cleanup(multistep.StateBag) {}

// ConvertArgs builds the qemu-img convert command line to a standalone
// qcow2 (backing chains are flattened), compressed if asked.
func ConvertArgs(fromFormat, in, out string, compress bool) []string {
	args := []string{"convert", "-q", "-f", fromFormat, "-O", "qcow2"}
	if compress {
		args = append(args, "-c")
	}
	return append(args, in, out)
}
