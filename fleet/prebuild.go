package fleet

import (
	"context"
	"errors"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/prebuild"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// PrebuildRequest is what `fleet prebuild` asks for: the project's
// template, a warm template of a machine after the project came in and
// its setup ran, for machines of this image and shape.
type PrebuildRequest struct {
	Image     ImageRef
	CPUs      int
	MemoryMiB int
	Arch      vm.Arch // as SpawnRequest.Arch: the consent to emulate
	// Workspace is how the project comes in (fleet.hcl's sync, else git
	// or rsync); Dir is the project folder.
	Workspace WorkspaceRequest
	// Project is the project's fleet.hcl: SetupCommands, PrebuildInputs.
	Project Project
	// Network is the machines' network as spawn would ask for it (the
	// template key's network shape). Setup runs under its egress policy
	// and with no model credential.
	Network NetworkRequest
	// Force remakes the prebuild even if one exists for its key.
	Force bool
}

// PrebuildResult is the prebuild found or made.
type PrebuildResult struct {
	Image    string          `json:"image"` // name@version
	Key      string          `json:"key"`
	Inputs   []string        `json:"inputs"` // relative to the project
	Made     bool            `json:"made"`   // false: one for this key was there
	Template images.Template `json:"template"`
}

// Prebuild finds or makes the project's prebuild.
//
// LEAD: placeholder, to be replaced by the VM side (make the template
// from a machine after bring-in and setup, publish with
// images.PublishPrebuild). The key comes from PrebuildKey.
func (c *Controller) Prebuild(ctx context.Context, req PrebuildRequest) (PrebuildResult, error) {
	return PrebuildResult{}, errors.New("prebuild: not built yet")
}

// PrebuildKey is the project's prebuild key for the warm template key
// templateKey: the input files (fleet.hcl's prebuild_inputs, else the
// lockfiles found in projectDir) resolved, then keyed with the setup
// commands by prebuild.Key.
func (p Project) PrebuildKey(templateKey, projectDir string) (key, inputsDigest string, inputs []string, err error) {
	if inputs, err = prebuild.Inputs(projectDir, p.PrebuildInputs); err != nil {
		return "", "", nil, err
	}
	key, inputsDigest, err = prebuild.Key(templateKey, p.SetupCommands(), projectDir, inputs)
	return key, inputsDigest, inputs, err
}
