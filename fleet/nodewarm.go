package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
)

// NodeTemplates are warm templates kept on a host other than the
// controller's, where a driver's machines run: a Slurm job's process
// restores its machine from one on its node. They are made by the same
// buildTemplate as the controller's, checked by the same image-store code
// before each use, and kept in a store folder of that host, one folder
// per image disk digest, keyed by that host's own QEMU (a node of another
// QEMU version or accelerator makes its own).
type NodeTemplates struct{}

// hostWarm is how a HostWarmer driver's machines start: from the warm
// template of the host each lands on, or booted (said, with why).
func (tp Templates) hostWarm(req SpawnRequest) vm.HostWarm {
	c := tp.c
	switch {
	case req.Warm == WarmNever:
		c.say("cold boot: --cold")
		return vm.HostWarmOff
	case !provision.CanWarm(req.Image.Recipe):
		c.say("cold boot instead of a warm restore: %s (recipe %s) has no guest agent to give a restored clone its identity", req.Image, req.Image.Recipe)
		return vm.HostWarmOff
	case req.Warm == WarmExisting:
		c.say("each machine restores its node's warm template of this shape if the node has one (--no-warm: a node without one boots the machine)")
		return vm.HostWarmExisting
	}
	c.say("each machine restores its node's warm template of this shape; a node without one makes it first (one cold boot there)")
	return vm.HostWarmMake
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Template is the template for machines of s's shape in store, made
// first (one cold boot, one maker per key) if there is none and mayMake.
// s is the machine as the node starts it: BaseImage the node's checked
// copy, BaseImageSHA256 its digest.
func (NodeTemplates) Template(ctx context.Context, d vm.Driver, store string, s vm.Spec, mayMake bool) (vm.Template, error) {
	if !sha256Re.MatchString(s.BaseImageSHA256) {
		return vm.Template{}, fmt.Errorf("the image has no sha256 digest (got %q)", s.BaseImageSHA256)
	}
	if !d.Capabilities().Snapshots {
		return vm.Template{}, fmt.Errorf("the node's %s driver cannot save machine state", d.Name())
	}
	shape := vm.Spec{Name: "probe", BaseImage: s.BaseImage, BaseImageSHA256: s.BaseImageSHA256, Arch: s.Arch, CPUs: s.CPUs,
		MemoryMiB: s.MemoryMiB, Network: s.Network, Boot: s.Boot}
	key, err := vm.StateKey(ctx, d, shape)
	if err != nil {
		return vm.Template{}, err
	}
	key = "image=sha256:" + s.BaseImageSHA256 + " " + key
	img := images.Image{Dir: filepath.Join(store, s.BaseImageSHA256[:32]), Disk: s.BaseImage}
	if t, ok := images.FindTemplate(img, key); ok {
		return vmTemplate(t), nil
	}
	if !mayMake {
		return vm.Template{}, errors.New("none of this shape yet, and --no-warm makes none")
	}
	if err := os.MkdirAll(filepath.Join(img.Dir, layout.WarmFolder), 0o700); err != nil {
		return vm.Template{}, err
	}
	// Jobs of this user starting together on one node make it once.
	unlock, err := lockFile(ctx, images.TemplateDir(img, key)+layout.TemplateLockSuffix, "this node's warm template", nil)
	if err != nil {
		return vm.Template{}, err
	}
	defer unlock()
	if t, ok := images.FindTemplate(img, key); ok {
		return vmTemplate(t), nil
	}
	shape.Name, shape.Dir = templateMachineName(), stagingDir(img)
	t, err := buildTemplate(ctx, d, img, key, shape, d.Capabilities().BootTimeoutFor(s.Arch))
	if err != nil {
		return vm.Template{}, err
	}
	return vmTemplate(t), nil
}

// Identify gives s, restored from a node's template, its Seed's identity.
func (NodeTemplates) Identify(ctx context.Context, d vm.Driver, s vm.Spec) error {
	return identifyWith(ctx, d, s, s.Seed, false)
}

func vmTemplate(t images.Template) vm.Template {
	return vm.Template{Disk: t.Disk(), Memory: t.Memory(), State: t.State()}
}
