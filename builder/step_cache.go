package builder

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/qcow2"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepCheckCache looks for a disk already built from the same recipe (same
// mirror, suite, packages and scripts). A hit skips the bootstrap,
// provision, disk and convert steps. A cached disk whose qcow2 header
// names another file (or is not a standalone qcow2) is not used.
//
// Reads "config", "recipe_hash", "workdir". Writes, on a hit, "qcow2",
// "cache_hit", "versions" and, for direct boot, "boot" (all recorded
// beside the cached disk). No cleanup (the copy lives in the workdir).
type StepCheckCache struct{}

func (s *StepCheckCache) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	hash := state.Get("recipe_hash").(string)
	if cfg.CacheDir == "" {
		return multistep.ActionContinue
	}
	cached := cachePath(cfg, hash)
	if !fileExists(cached) {
		return multistep.ActionContinue
	}
	// The cache is a folder anyone with the user's rights writes: a disk
	// there is judged as one from outside before it becomes an image.
	if _, err := qcow2.Check(cached, qcow2.Expect{Format: qcow2.QCOW2}); err != nil {
		cfg.say("cached disk not used, rebuilding: %v", err)
		return multistep.ActionContinue
	}
	dst := filepath.Join(state.Get("workdir").(string), layout.ImageDisk)
	if err := linkOrCopy(cached, dst); err != nil {
		cfg.say("cache unreadable, rebuilding: %v", err)
		return multistep.ActionContinue
	}
	if cfg.directBoot() {
		boot, err := cachedBoot(cached, state.Get("workdir").(string))
		if err != nil {
			cfg.say("cache has no kernel for direct boot, rebuilding: %v", err)
			os.Remove(dst)
			return multistep.ActionContinue
		}
		state.Put("boot", boot)
	}
	if b, err := os.ReadFile(cached + ".versions.json"); err == nil {
		if v, err := parseVersions(b); err == nil {
			state.Put("versions", v)
		}
	}
	cfg.say("recipe %s already built: using cached disk %s", hash[:12], cached)
	state.Put("qcow2", dst)
	state.Put("cache_hit", true)
	return multistep.ActionContinue
}

func (s *StepCheckCache) Cleanup(multistep.StateBag) {}

// cachedBoot brings the kernel, initrd and command line cached beside a
// disk into the workdir.
func cachedBoot(cached, work string) (*vm.DirectBoot, error) {
	cmdline, err := os.ReadFile(cached + ".cmdline")
	if err != nil {
		return nil, err
	}
	boot := &vm.DirectBoot{Kernel: filepath.Join(work, "vmlinuz"), Initrd: filepath.Join(work, "initrd.img"), Cmdline: string(cmdline)}
	if err := linkOrCopy(cached+".vmlinuz", boot.Kernel); err != nil {
		return nil, err
	}
	if err := linkOrCopy(cached+".initrd.img", boot.Initrd); err != nil {
		return nil, err
	}
	return boot, nil
}

// linkOrCopy hard-links src to dst, copying when they are on different
// file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".part"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}
