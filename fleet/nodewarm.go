package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

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

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Template is the template for machines of s's shape in store, made
// first (one cold boot, one maker per key) if there is none and mayMake.
// s is the machine as the node starts it: BaseImage the node's checked
// copy (named by its digest), its forwards serving the job's folder.
func (NodeTemplates) Template(ctx context.Context, d vm.Driver, store string, s vm.Spec, mayMake bool) (vm.Template, error) {
	img, key, err := nodeTemplateKey(ctx, d, store, s)
	if err != nil {
		return vm.Template{}, err
	}
	// Jobs of this user starting together on one node make it once.
	t, _, err := findOrMake(ctx, img, key, mayMake, 0o700, "this node's warm template", nil, func() (images.Template, error) {
		sweepStaging(filepath.Join(img.Dir, layout.WarmFolder), time.Hour)
		return buildTemplate(ctx, d, img, key, nodeTemplateShape(s, templateMachineName(), stagingDir(img)), d.Capabilities().BootTimeoutFor(s.Arch))
	})
	if errors.Is(err, errNoTemplate) {
		return vm.Template{}, errors.New("none of this shape yet, and --no-warm makes none")
	}
	if err != nil {
		return vm.Template{}, err
	}
	return t.VM(), nil
}

// nodeTemplateKey is the store folder of s's image on this node and the
// key of its warm template of s's shape.
func nodeTemplateKey(ctx context.Context, d vm.Driver, store string, s vm.Spec) (images.Image, string, error) {
	if !sha256Re.MatchString(s.BaseImageSHA256) || filepath.Base(s.BaseImage) != "sha256-"+s.BaseImageSHA256 {
		return images.Image{}, "", fmt.Errorf("the image copy %s is not named by its sha256 digest %q", s.BaseImage, s.BaseImageSHA256)
	}
	if !d.Capabilities().Snapshots {
		return images.Image{}, "", fmt.Errorf("the node's %s driver cannot save machine state", d.Name())
	}
	img := images.Image{Dir: filepath.Join(store, s.BaseImageSHA256[:16]), Disk: s.BaseImage}
	shape := nodeTemplateShape(s, "probe", "")
	key, err := vm.StateKey(ctx, d, shape)
	if err != nil {
		return images.Image{}, "", err
	}
	// The node's name: a node_dir that several nodes share (no %n) must
	// not hand one node's saved CPU state to another's.
	host, _ := os.Hostname()
	return img, "image=sha256:" + s.BaseImageSHA256 + " node=" + host + " boot=" + bootKey(s.Boot) + " " + key, nil
}

// nodePrebuildKey is the key of the controller's prebuild key on this
// node's warm template t of key tkey: a prebuild restores only where the
// template it was made from would, and only on that very template (one
// removed after a failed restore and made again is another: its disk,
// which the prebuild's overlays, is new).
func nodePrebuildKey(tkey string, t images.Template, key string) string {
	return tkey + " template-made=" + t.CreatedAt.UTC().Format(time.RFC3339Nano) + " prebuild=" + key
}

// errNoPrebuild: the node holds no prebuild of the key asked for.
var errNoPrebuild = errors.New("no prebuild of this project on this node")

// Prebuild is this node's prebuild of s.HostPrebuild for machines of s's
// shape, checked as the controller's are; it never makes one.
func (NodeTemplates) Prebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec) (vm.Template, error) {
	img, tkey, err := nodeTemplateKey(ctx, d, store, s)
	if err != nil {
		return vm.Template{}, err
	}
	wt, ok := images.FindTemplate(img, tkey)
	if !ok {
		return vm.Template{}, errNoPrebuild // none without its template
	}
	t, ok := images.FindPrebuild(img, nodePrebuildKey(tkey, wt, s.HostPrebuild))
	if !ok {
		return vm.Template{}, errNoPrebuild
	}
	return t.VM(), nil
}

// SavePrebuild captures s, the job's running machine restored from this
// node's warm template after the controller brought the project in, ran
// its setup and took its key away, as the prebuild of key; it returns
// the prebuild's size on disk.
func (NodeTemplates) SavePrebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec, key string, info vm.PrebuildInfo) (int64, error) {
	if s.Template == nil {
		return 0, errors.New("the machine was not restored from this node's warm template, so no prebuild of it restores")
	}
	img, tkey, err := nodeTemplateKey(ctx, d, store, s)
	if err != nil {
		return 0, err
	}
	wt, ok := images.FindTemplate(img, tkey)
	if !ok || wt.Disk() != s.Template.Disk {
		return 0, errors.New("the machine was not restored from this node's current warm template of its shape")
	}
	sweepStaging(filepath.Join(img.Dir, layout.PrebuildFolder), time.Hour)
	// Each make's key is its own (the controller adds an id), so none is
	// there to replace.
	t, err := capturePrebuild(ctx, d, img, s, prebuildMeta(nodePrebuildKey(tkey, wt, key), s.CPUs, s.MemoryMiB, info, tkey, wt.BootSec))
	if err != nil {
		return 0, err
	}
	return t.Bytes, nil
}

// nodeTemplateShape is the template machine for s: its shape, in dir,
// with its proxies serving dir (as the controller's template's do) and
// no credential in its environment.
func nodeTemplateShape(s vm.Spec, name, dir string) vm.Spec {
	n := vm.Network{Restrict: s.Network.Restrict}
	for _, f := range s.Network.Forwards {
		cmd := append([]string(nil), f.Command...)
		for i := range cmd {
			if cmd[i] == s.Dir && dir != "" {
				cmd[i] = dir
			}
		}
		n.Forwards = append(n.Forwards, vm.Forward{GuestPort: f.GuestPort, Command: cmd})
	}
	return vm.Spec{Name: name, Dir: dir, BaseImage: s.BaseImage, BaseImageSHA256: s.BaseImageSHA256, Arch: s.Arch, CPUs: s.CPUs,
		MemoryMiB: s.MemoryMiB, Network: n, Boot: s.Boot}
}

// bootKey names a directly started kernel by its files (the node names
// its copies by digest) and its command line.
func bootKey(b *vm.DirectBoot) string {
	if b == nil {
		return "firmware"
	}
	h := sha256.Sum256([]byte(filepath.Base(b.Kernel) + "\x00" + filepath.Base(b.Initrd) + "\x00" + b.Cmdline))
	return hex.EncodeToString(h[:8])
}

// sweepStaging removes templates whose making stopped more than age ago
// (a job killed outright mid-make leaves one, a guest's RAM in size).
func sweepStaging(warm string, age time.Duration) {
	entries, _ := os.ReadDir(warm)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), layout.TemplateStagingPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > age {
			_ = os.RemoveAll(filepath.Join(warm, e.Name()))
		}
	}
}

// Forget removes t, a template or prebuild of a node store that did not
// restore.
func (NodeTemplates) Forget(ctx context.Context, t vm.Template) error {
	dir := filepath.Dir(t.Disk)
	if f := filepath.Base(filepath.Dir(dir)); f != layout.WarmFolder && f != layout.PrebuildFolder {
		return fmt.Errorf("%s is not a template folder", dir)
	}
	return os.RemoveAll(dir)
}

// Identify gives s, restored from a node's template, its Seed's identity.
func (NodeTemplates) Identify(ctx context.Context, d vm.Driver, s vm.Spec) error {
	return identifyWith(ctx, d, s, s.Seed, false)
}

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
