package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/filelock"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
	"golang.org/x/crypto/ssh"
)

// Templates makes and finds warm templates (a booted, anonymous machine
// saved to disk and RAM) and gives a restored clone its own identity.
type Templates struct{ c *Controller }

// Templates is the warm-template concern of c.
func (c *Controller) Templates() Templates { return Templates{c} }

// Warm clones: a machine restored from a template (one machine of the
// image, booted to ready and anonymous, saved) instead of booted. Each
// clone's disk is an overlay on the template's frozen disk; its RAM is the
// template's until it runs. Before it touches the network it is given its
// own identity over the host-only guest agent channel: fresh randomness,
// machine-id, hostname, the host key made here for it, the fleet's key,
// the host's time, and its network settings (proxies and token).

// templateHostname is what every template (and so every clone, until
// identify renames it) is called.
const templateHostname = "fleet-template"

// imageOf is the image store's view of a resolved image.
func imageOf(r ImageRef) images.Image {
	return images.Image{Dir: filepath.Dir(r.Disk), Disk: r.Disk}
}

// templateSpec is the shape a template for these machines must have:
// everything StateKey reads.
func (tp Templates) templateSpec(name, dir string, img ImageRef, cpus, mem int, n *Network) (vm.Spec, error) {
	m := &Machine{Name: name, Dir: dir, Network: n}
	net, err := tp.c.Net().networkShape(m)
	return vm.Spec{Name: name, Dir: dir, BaseImage: img.Disk, Arch: img.Arch, CPUs: cpus, MemoryMiB: mem, Network: net, Boot: img.Boot}, err
}

// Template returns the warm template of img for machines of this shape,
// making it first if there is none (made tells which). A template whose
// key does not match exactly is never used.
func (tp Templates) Template(ctx context.Context, img ImageRef, cpus, mem int, n *Network) (t images.Template, made bool, err error) {
	return tp.template(ctx, img, cpus, mem, n, true)
}

// errNoTemplate: there is no template of that shape, and none was to be made.
var errNoTemplate = errors.New("no warm template of this shape")

// template finds the template for machines of this shape; with mayMake
// it makes one when there is none, else it returns errNoTemplate.
func (tp Templates) template(ctx context.Context, img ImageRef, cpus, mem int, n *Network, mayMake bool) (t images.Template, made bool, err error) {
	if !tp.c.Driver.Capabilities().Snapshots {
		return t, false, fmt.Errorf("the %s driver cannot save machine state", tp.c.Driver.Name())
	}
	if !provision.CanWarm(img.Recipe) {
		return t, false, fmt.Errorf("%s (recipe %s) has no guest agent, so no clone of it could be given its own identity: build it with the full recipe", img, img.Recipe)
	}
	probe, err := tp.templateSpec("probe", "", img, cpus, mem, n)
	if err != nil {
		return t, false, err
	}
	key, err := vm.StateKey(ctx, tp.c.Driver, probe)
	if err != nil {
		return t, false, err
	}
	key = "image=" + img.String() + " " + key
	return findOrMake(ctx, imageOf(img), key, mayMake, 0o755, "the warm template of "+img.String(),
		func() { tp.c.say("waiting for another fleet command making this warm template of %s...", img) },
		func() (images.Template, error) { return tp.makeTemplate(ctx, img, key, cpus, mem, n) })
}

// findOrMake is img's template for key: found, or, with mayMake, made by
// make under the key's lock (one maker per key; templates of other shapes
// are made meanwhile), looked for again once the lock is held. With
// neither it is errNoTemplate. The controller's and a node's templates
// are found and made this one way; perm is the warm folder's mode.
func findOrMake(ctx context.Context, img images.Image, key string, mayMake bool, perm os.FileMode, what string, onWait func(), make func() (images.Template, error)) (t images.Template, made bool, err error) {
	if t, ok := images.FindTemplate(img, key); ok {
		return t, false, nil
	}
	if !mayMake {
		return t, false, errNoTemplate
	}
	if err := os.MkdirAll(filepath.Join(img.Dir, layout.WarmFolder), perm); err != nil {
		return t, false, err
	}
	unlock, err := filelock.Exclusive(ctx, images.TemplateDir(img, key)+layout.TemplateLockSuffix, what, onWait)
	if err != nil {
		return t, false, err
	}
	defer unlock()
	if t, ok := images.FindTemplate(img, key); ok {
		return t, false, nil
	}
	t, err = make()
	return t, err == nil, err
}

// makeTemplate boots one anonymous machine of img, waits until it is
// ready, takes away its key, and saves it.
func (tp Templates) makeTemplate(ctx context.Context, img ImageRef, key string, cpus, mem int, n *Network) (images.Template, error) {
	iimg := imageOf(img)
	iimg.Name = img.Name
	shape, err := tp.templateSpec(templateMachineName(), stagingDir(iimg), img, cpus, mem, n)
	if err != nil {
		return images.Template{}, err
	}
	tp.c.say("making a warm template of %s (%d CPUs, %d MiB): one cold boot, then every clone restores it", img, cpus, mem)
	t0 := time.Now()
	t, err := buildTemplate(ctx, tp.c.Driver, iimg, key, shape, tp.c.Guests().bootTimeout(img.Arch))
	if err != nil {
		return t, err
	}
	tp.c.say("warm template of %s ready in %s (%d MiB)", img, time.Since(t0).Round(time.Second), t.Bytes>>20)
	return t, nil
}

// templateMachineName and stagingDir name a template being made, and the
// folder it is made in under img's warm/.
func templateMachineName() string { return "fleet-warm-" + randomHex(4) }

func stagingDir(img images.Image) string {
	return filepath.Join(img.Dir, layout.WarmFolder, layout.TemplateStagingPrefix+randomHex(6))
}

// buildTemplate boots one anonymous machine of shape (everything the
// state key reads; its Name and Dir from templateMachineName and
// stagingDir) with d, waits until it is ready, takes away its key, saves
// it and publishes it as img's template for key. Whatever fails, nothing
// half-made stays. It is the one maker of templates: the controller's
// and a cluster node's.
func buildTemplate(ctx context.Context, d vm.Driver, img images.Image, key string, shape vm.Spec, bootTimeout time.Duration) (images.Template, error) {
	spec, staged := shape, shape.Dir
	if err := os.MkdirAll(filepath.Dir(staged), 0o755); err != nil {
		return images.Template{}, err
	}
	spec.MemoryFile = filepath.Join(staged, images.TemplateMemory)
	host, err := sshx.NewKeyPair("")
	if err != nil {
		return images.Template{}, err
	}
	user, err := sshx.NewKeyPair("fleet-template")
	if err != nil {
		return images.Template{}, err
	}
	spec.Seed = vm.Seed{InstanceID: randomID(), Hostname: templateHostname, User: GuestUser, AuthorizedKey: user.AuthorizedKey,
		HostKeyPrivate: string(host.PrivatePEM), HostKeyPublic: host.AuthorizedKey}
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			_ = d.Delete(cctx, spec)
			_ = os.RemoveAll(staged)
		}
	}()
	t0 := time.Now()
	if err := d.Create(ctx, spec); err != nil {
		return images.Template{}, err
	}
	rt, err := d.Start(ctx, spec)
	if err != nil {
		return images.Template{}, err
	}
	signer, err := ssh.ParsePrivateKey(user.PrivatePEM)
	if err != nil {
		return images.Template{}, err
	}
	hk, err := sshx.ParseAuthorizedKey(host.AuthorizedKey)
	if err != nil {
		return images.Template{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	cl, err := sshx.WaitReady(wctx, sshx.Target{Addr: rt.SSHAddr, User: GuestUser, Signer: signer, HostKey: hk}, sshx.DefaultBackoff)
	if err != nil {
		return images.Template{}, fmt.Errorf("warm template: waiting for SSH: %w (serial console: %s)", err, filepath.Join(staged, layout.SerialFile))
	}
	// Ready means booted through: then it forgets the key it was reached
	// with, so the saved RAM and disk hold no one's key.
	err = guest.OverSSH(spec.Name, cl).Run(wctx, guest.Cmd{Step: "settle the guest", Script: "cloud-init status --wait >/dev/null 2>&1; systemctl is-system-running --wait >/dev/null 2>&1; " +
		"rm -f ~/.ssh/authorized_keys; sudo -n rm -f /root/.ssh/authorized_keys; sync"})
	cl.Close()
	if err != nil {
		return images.Template{}, fmt.Errorf("warm template: %w", err)
	}
	bootTook := time.Since(t0)
	// The identity channel must work, or no clone could be given one.
	agent, err := guestAgentOf(d, spec)
	if err != nil {
		return images.Template{}, fmt.Errorf("warm template: %w", err)
	}
	gctx, gcancel := context.WithTimeout(ctx, 2*time.Minute)
	err = agent.Run(gctx, guest.Cmd{Step: "check the guest agent", Script: "true"})
	gcancel()
	if err != nil {
		name := img.Name
		if name == "" {
			name = "IMAGE"
		}
		return images.Template{}, fmt.Errorf("warm template: %w (rebuild the image for warm clones: fleet image build %s)", err, name)
	}
	time.Sleep(time.Second) // the SSH session ends in the guest too
	if err := vm.SaveState(ctx, d, spec, filepath.Join(staged, images.TemplateState)); err != nil {
		return images.Template{}, fmt.Errorf("warm template: %w", err)
	}
	for _, f := range []string{layout.SeedFile, layout.SerialFile} {
		_ = os.Remove(filepath.Join(staged, f))
	}
	meta, _ := json.MarshalIndent(images.TemplateMetaInfo{Key: key, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, CreatedAt: time.Now().UTC(), BootSec: bootTook.Seconds()}, "", "  ")
	if err := os.WriteFile(filepath.Join(staged, images.TemplateMeta), append(meta, '\n'), 0o644); err != nil {
		return images.Template{}, err
	}
	t, err := images.PublishTemplate(img, key, staged)
	if err != nil {
		return images.Template{}, err
	}
	ok = true
	return t, nil
}

// identify gives a clone restored from a template its own identity, over
// the guest agent, before anything reaches it over the network.
//
// A fork's child (fork) also forgets its source's network settings.
func (tp Templates) identify(ctx context.Context, spec vm.Spec, seed vm.Seed, fork bool) error {
	return identifyWith(ctx, tp.c.Driver, spec, seed, fork)
}

// identifyWith is identify through driver d (a cluster node's own).
func identifyWith(ctx context.Context, d vm.Driver, spec vm.Spec, seed vm.Seed, fork bool) error {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// One guest process sets the clock, then the rest (the clock first:
	// the template's stood still while it was saved).
	r := &vm.Restored{MachineID: randomHex(16), Entropy: randomBytes(64), Now: time.Now(), Arch: spec.Arch}
	if fork {
		r.Fork, r.ForgetEnv = true, guestNetworkEnvKeys
	}
	agent, err := guestAgentOf(d, spec)
	if err != nil {
		return fmt.Errorf("give it its identity: %w", err)
	}
	return agent.Run(ictx, guest.Cmd{Step: "give it its identity", Script: seed.IdentityScript(r)})
}

// guestAgentOf is the runner over d's host-only channel into spec's
// machine, for a driver that has one.
func guestAgentOf(d vm.Driver, spec vm.Spec) (*guest.Runner, error) {
	a, err := vm.Guest(d)
	if err != nil {
		return nil, err
	}
	return guest.OverAgent(a, spec), nil
}

func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
