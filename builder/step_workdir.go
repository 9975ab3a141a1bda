package builder

import (
	"context"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepWorkDir makes the build's scratch folder.
//
// Reads "config". Writes "workdir". Cleanup removes the folder, unless the
// build failed and KeepOnFailure is set.
type StepWorkDir struct{ dir string }

func (s *StepWorkDir) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	if err := os.MkdirAll(cfg.TmpDir, 0o755); err != nil {
		return halt(state, err)
	}
	dir, err := os.MkdirTemp(cfg.TmpDir, "build-"+cfg.Name+"-")
	if err != nil {
		return halt(state, err)
	}
	s.dir = dir
	state.Put("workdir", dir)
	return multistep.ActionContinue
}

func (s *StepWorkDir) Cleanup(state multistep.StateBag) {
	if s.dir == "" {
		return
	}
	cfg := state.Get("config").(*Config)
	if failed(state) && cfg.KeepOnFailure {
		cfg.say("keeping build folder for debugging: %s", s.dir)
		return
	}
	_ = os.RemoveAll(s.dir)
}
