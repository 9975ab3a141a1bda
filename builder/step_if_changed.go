package builder

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// StepIfChanged ends the build early, without error, when IfChanged is set
// and the latest image was built from the same recipe hash (same scripts,
// source digest and resolved versions): the nightly rebuild's no-op.
//
// Reads "config", "recipe_hash". Writes "skipped" and "image" (the current
// latest) when it skips. No cleanup.
type StepIfChanged struct{}

func (s *StepIfChanged) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	cfg := state.Get("config").(*Config)
	if !cfg.IfChanged {
		return multistep.ActionContinue
	}
	latest, err := cfg.Store.Resolve(cfg.Name)
	if err != nil {
		cfg.say("no %s image yet: building", cfg.Name)
		return multistep.ActionContinue
	}
	hash := state.Get("recipe_hash").(string)
	if latest.RecipeHash != hash {
		cfg.say("recipe, source or versions changed since %s@%s: building", latest.Name, latest.Version)
		return multistep.ActionContinue
	}
	cfg.say("%s@%s is up to date (recipe %s): nothing to build", latest.Name, latest.Version, hash[:12])
	state.Put("skipped", true)
	state.Put("image", latest)
	return multistep.ActionHalt
}

func (s *StepIfChanged) Cleanup(multistep.StateBag) {}
