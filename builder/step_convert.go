package builder

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepConvert converts the raw disk to qcow2 (sparse; uncompressed, since
// every clone reads through it and decompression would slow every boot).
//
// Reads "config", "raw", "workdir"; skipped when "qcow2" is set. Writes
// "qcow2", and a copy into the cache. Cleanup: files live in the workdir.
type StepConvert struct{}

func (s *StepConvert) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	out := filepath.Join(state.Get("workdir").(string), "disk.qcow2")
	if _, err := cfg.Runner.Run(ctx, execx.Cmd{Name: "qemu-img", Args: ConvertArgs(state.Get("raw").(string), out)}); err != nil {
		return halt(state, fmt.Errorf("convert to qcow2: %w", err))
	}
	state.Put("qcow2", out)
	if cfg.CacheDir != "" {
		cached := cachePath(cfg, state.Get("recipe_hash").(string))
		if err := ensureDir(filepath.Dir(cached)); err == nil {
			if err := linkOrCopy(out, cached); err != nil {
				cfg.say("could not cache the disk: %v", err)
			}
		}
	}
	return multistep.ActionContinue
}

func (s *StepConvert) Cleanup(multistep.StateBag) {}

// ConvertArgs builds the qemu-img convert command line.
func ConvertArgs(raw, qcow2 string) []string {
	return []string{"convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow2}
}
