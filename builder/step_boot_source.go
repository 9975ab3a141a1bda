package builder

import (
	"context"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepBootSource boots the verified cloud image as a linked clone with a
// NoCloud seed carrying a throwaway build key and a host key made here,
// waits for SSH with that key pinned, and hands the provision step the
// SSH communicator over its pinned-key connection.
//
// Reads "config", "source_image", "workdir"; skipped on a cache hit.
// Writes "communicator", "build_guest". Cleanup forces the VM off and
// deletes its clone unless the build failed and KeepOnFailure is set.
type StepBootSource struct{ g *guest }

func (s *StepBootSource) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if _, ok := state.GetOk("qcow2"); ok {
		return multistep.ActionContinue
	}
	cfg := state.Get("config").(*Config)
	dir := filepath.Join(state.Get("workdir").(string), "build-vm")
	cfg.say("booting the source image to provision it over SSH (under TCG this takes minutes)...")
	g, err := bootGuest(ctx, cfg, "fleet-build-"+cfg.Name, state.Get("source_image").(string), dir, "agent", nil)
	if err != nil {
		return halt(state, err)
	}
	s.g = g
	state.Put("communicator", &sshComm{client: g.client})
	state.Put("build_guest", g)
	return multistep.ActionContinue
}

func (s *StepBootSource) Cleanup(state multistep.StateBag) { s.g.cleanup(state, "build") }
