package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/provision"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepProvisionChroot runs the numbered provision scripts inside the root
// file system with chroot: host speed instead of an emulated guest's.
//
// Reads "config", "rootfs"; skipped when "qcow2" is set. Writes nothing.
// Mounts /proc, /sys and /dev into the chroot only while scripts run and
// unmounts them (in reverse) before returning, also on failure.
type StepProvisionChroot struct{}

func (s *StepProvisionChroot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	rootfs := state.Get("rootfs").(string)
	unmount, err := bindSystemDirs(ctx, cfg.Runner, rootfs)
	defer unmount()
	if err != nil {
		return halt(state, err)
	}
	for _, sc := range provision.RootfsScripts() {
		cfg.say("provision: %s", sc.Name)
		dst := filepath.Join(rootfs, "tmp", "fleet-"+sc.Name)
		if err := os.WriteFile(dst, sc.Body, 0o755); err != nil {
			return halt(state, err)
		}
		_, err := cfg.Runner.Run(ctx, execx.Cmd{
			Name: "chroot", Args: []string{rootfs, "/bin/sh", "/tmp/fleet-" + sc.Name},
			Env: []string{"DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"},
		})
		_ = os.Remove(dst)
		if err != nil {
			return halt(state, fmt.Errorf("provision script %s failed: %w", sc.Name, err))
		}
	}
	return multistep.ActionContinue
}

func (s *StepProvisionChroot) Cleanup(multistep.StateBag) {}

// bindSystemDirs bind-mounts /dev, /proc and /sys into root. The returned
// function unmounts whatever was mounted, last first.
func bindSystemDirs(ctx context.Context, r execx.Runner, root string) (func(), error) {
	var mounted []string
	undo := func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			_, _ = r.Run(context.Background(), execx.Cmd{Name: "umount", Args: []string{"-l", mounted[i]}})
		}
		mounted = nil
	}
	for _, d := range []string{"dev", "proc", "sys"} {
		target := filepath.Join(root, d)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return undo, err
		}
		if _, err := r.Run(ctx, execx.Cmd{Name: "mount", Args: []string{"--bind", "/" + d, target}}); err != nil {
			return undo, err
		}
		mounted = append(mounted, target)
	}
	return undo, nil
}
