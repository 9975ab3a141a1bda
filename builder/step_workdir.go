package builder

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepWorkDir makes the build's scratch folder.
//
// Refuses to start without room for the build (a full disk half-way
// through a bake fails late and confusingly).
//
// Reads "config". Writes "workdir". Cleanup removes the folder, unless the
// build failed and KeepOnFailure is set.
type StepWorkDir struct{ dir string }

func (s *StepWorkDir) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	if err := os.MkdirAll(cfg.TmpDir, 0o755); err != nil {
		return halt(state, err)
	}
	if err := checkFreeSpace(cfg.TmpDir, cfg.neededMiB()); err != nil {
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

// neededMiB is roughly what a build writes under TmpDir: the root file
// system or source, a raw or overlay disk, the qcow2 and the exports.
func (c *Config) neededMiB() int64 {
	if c.MinFreeMiB > 0 {
		return c.MinFreeMiB
	}
	return int64(c.DiskSizeGiB) * 1024 / 2
}

func checkFreeSpace(dir string, needMiB int64) error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return err
	}
	free := int64(fs.Bavail) * int64(fs.Bsize) >> 20
	if free < needMiB {
		return fmt.Errorf("not enough disk space under %s: %d MiB free, a build needs about %d MiB", dir, free, needMiB)
	}
	return nil
}
