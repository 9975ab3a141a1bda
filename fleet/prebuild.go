package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/filelock"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/termsafe"
	"github.com/agentfleet/agentfleet/internal/workspace"

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
	// QueueWait bounds how long a batch scheduler may keep the prebuild's
	// machine queued (0: as long as the context).
	QueueWait time.Duration
}

// PrebuildResult is the prebuild found or made.
type PrebuildResult struct {
	Image    string          `json:"image"` // name@version
	Key      string          `json:"key"`
	Inputs   []string        `json:"inputs"` // relative to the project
	Made     bool            `json:"made"`   // false: one for this key was there
	Template images.Template `json:"template"`
	// Host is where a driver whose machines run on other hosts made it
	// (Template then has no folder here), NodeKey the key it is kept
	// under there.
	Host    string `json:"host,omitempty"`
	NodeKey string `json:"node_key,omitempty"`
}

// Prebuild finds or makes the project's prebuild (with Force, makes it
// again).
func (tp Templates) Prebuild(ctx context.Context, req PrebuildRequest) (PrebuildResult, error) {
	_, netRec, err := req.Network.normalize(tp.c.Driver)
	if err != nil {
		return PrebuildResult{}, err
	}
	if vm.WarmsOnHost(tp.c.Driver) {
		return tp.hostPrebuild(ctx, req, req.Force, true)
	}
	wt, _, err := tp.Template(ctx, req.Image, req.CPUs, req.MemoryMiB, netRec)
	if err != nil {
		return PrebuildResult{}, err
	}
	return tp.prebuild(ctx, req, wt, req.Force)
}

// errNoSetup: the project has no setup commands, so nothing to prebuild.
var errNoSetup = errors.New("the project has no setup commands (setup = [...] in fleet.hcl): there is nothing to prebuild")

// prebuildFormat is in every prebuild's key: a prebuild made by a fleet
// that left its workspace otherwise (format 1 kept its machine's branch
// and author, which an update now appends to) is never restored.
const prebuildFormat = "2"

// prebuildKey is the key of req's prebuild on the warm template wt: the
// template's key and the sync mode, the setup commands, the inputs.
func prebuildKey(req PrebuildRequest, wt images.Template) (key, digest string, inputs []string, err error) {
	if len(req.Project.SetupCommands()) == 0 {
		return "", "", nil, errNoSetup
	}
	if req.Workspace.Mode != SyncGit && req.Workspace.Mode != SyncRsync {
		return "", "", nil, fmt.Errorf("a prebuild needs the project in the machine (--sync git or rsync, not %q)", req.Workspace.Mode)
	}
	// The project's own folder is in the key: another project with the
	// same setup and lockfile must never restore this one's files.
	dir, err := filepath.Abs(req.Workspace.Dir)
	if err != nil {
		return "", "", nil, err
	}
	key, digest, inputs, err = req.Project.PrebuildKey(wt.Key+" sync="+string(req.Workspace.Mode)+" project="+dir+" format="+prebuildFormat, req.Workspace.Dir)
	return key, digest, inputs, err
}

// prebuild finds the prebuild of req on wt, or makes it (always with
// remake).
func (tp Templates) prebuild(ctx context.Context, req PrebuildRequest, wt images.Template, remake bool) (PrebuildResult, error) {
	key, digest, inputs, err := prebuildKey(req, wt)
	if err != nil {
		return PrebuildResult{}, err
	}
	img := imageOf(req.Image)
	res := PrebuildResult{Image: req.Image.String(), Key: key, Inputs: inputs}
	if t, ok := images.FindPrebuild(img, key); ok && !remake {
		res.Template = t
		return res, nil
	}
	unlock, err := tp.lockPrebuild(ctx, img, key, req)
	if err != nil {
		return res, err
	}
	defer unlock()
	if t, ok := images.FindPrebuild(img, key); ok && !remake {
		res.Template = t
		return res, nil
	}
	if remake {
		if t, ok := images.FindPrebuild(img, key); ok {
			inUse, err := BaseImagesInUse(tp.c.Layout)
			if err != nil {
				return res, fmt.Errorf("cannot tell which machines use the prebuild, so it is kept: %w", err)
			}
			if inUse[t.Disk()] {
				return res, fmt.Errorf("the prebuild of %s is in use by machines restored from it: destroy them before remaking it", filepath.Base(req.Workspace.Dir))
			}
			if err := images.RemovePrebuild(t); err != nil {
				return res, err
			}
		}
	}
	t, _, err := tp.makePrebuild(ctx, req, &wt, key, digest, inputs)
	if err != nil {
		return res, err
	}
	res.Template, res.Made = t, true
	return res, nil
}

// lockPrebuild takes the lock of the one maker of img's prebuild of key,
// saying so while another command holds it.
func (tp Templates) lockPrebuild(ctx context.Context, img images.Image, key string, req PrebuildRequest) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(images.PrebuildDir(img, key)), 0o700); err != nil {
		return nil, err
	}
	return filelock.Exclusive(ctx, images.PrebuildDir(img, key)+layout.TemplateLockSuffix, "the prebuild of "+filepath.Base(req.Workspace.Dir),
		func() { tp.c.say("waiting for another fleet command making this prebuild...") })
}

// hostPrebuildBase stands for the warm template key in the key of a
// prebuild kept on the hosts a driver's machines run on: each host adds
// its own template's key (its QEMU, the machine's shape) to it.
func hostPrebuildBase(req PrebuildRequest, n *Network) string {
	net := "open"
	if n != nil {
		net = fmt.Sprintf("egress=%s credentials=%s", n.Egress, n.Credentials)
	}
	return fmt.Sprintf("on-host image=%s sha256=%s cpus=%d memory=%d network=%s", req.Image, req.Image.DiskSHA256, req.CPUs, req.MemoryMiB, net)
}

// hostPrebuildRecord is what this host knows of a prebuild made on
// another: when, and where, as the driver said.
type hostPrebuildRecord struct {
	Key string `json:"key"`
	// NodeKey is the key the host saved it under: Key and this make's own
	// id, so that a remade prebuild (--force), which may land on another
	// host, leaves every older copy unmatched.
	NodeKey   string    `json:"node_key"`
	Host      string    `json:"host"`
	CreatedAt time.Time `json:"created_at"`
	// Commit is the commit its workspace holds (git mode).
	Commit string `json:"commit,omitempty"`
}

func hostPrebuildRecordPath(img images.Image, key string) string {
	return images.PrebuildDir(img, key) + layout.HostPrebuildRecordSuffix
}

func loadHostPrebuildRecord(img images.Image, key string) (hostPrebuildRecord, bool) {
	var r hostPrebuildRecord
	b, err := os.ReadFile(hostPrebuildRecordPath(img, key))
	if err != nil || json.Unmarshal(b, &r) != nil || r.Key != key || !strings.HasPrefix(r.NodeKey, key+" made=") {
		return hostPrebuildRecord{}, false
	}
	return r, true
}

// hostPrebuild is prebuild for a driver whose machines run on other
// hosts (vm.HostPrebuilder): made there by a machine of its own, and
// remembered here, so a spawn makes it once. A host that lost it, or one
// it was never made on, restores the warm template and the machine runs
// the setup.
func (tp Templates) hostPrebuild(ctx context.Context, req PrebuildRequest, remake, mayMake bool) (PrebuildResult, error) {
	_, netRec, err := req.Network.normalize(tp.c.Driver)
	if err != nil {
		return PrebuildResult{}, err
	}
	key, digest, inputs, err := prebuildKey(req, images.Template{TemplateMetaInfo: images.TemplateMetaInfo{Key: hostPrebuildBase(req, netRec)}})
	if err != nil {
		return PrebuildResult{}, err
	}
	img := imageOf(req.Image)
	res := PrebuildResult{Image: req.Image.String(), Key: key, Inputs: inputs}
	found := func() bool {
		r, ok := loadHostPrebuildRecord(img, key)
		if ok && !remake {
			res.Host, res.NodeKey = r.Host, r.NodeKey
			res.Template.TemplateMetaInfo = images.TemplateMetaInfo{Key: key, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, CreatedAt: r.CreatedAt, Kind: images.KindPrebuild, Commit: r.Commit}
		}
		return ok && !remake
	}
	if found() {
		return res, nil
	}
	if !mayMake {
		return res, errors.New("none made yet, and --no-warm makes none")
	}
	unlock, err := tp.lockPrebuild(ctx, img, key, req)
	if err != nil {
		return res, err
	}
	defer unlock()
	if found() {
		return res, nil
	}
	nodeKey := key + " made=" + randomHex(8)
	t, host, err := tp.makePrebuild(ctx, req, nil, nodeKey, digest, inputs)
	if err != nil {
		return res, err
	}
	b, _ := json.Marshal(hostPrebuildRecord{Key: key, NodeKey: nodeKey, Host: host, CreatedAt: t.CreatedAt, Commit: t.Commit})
	if err := WriteFileAtomic(hostPrebuildRecordPath(img, key), append(b, '\n'), 0o600); err != nil {
		return res, err
	}
	res.Template, res.Host, res.NodeKey, res.Made = t, host, nodeKey, true
	return res, nil
}

// makePrebuild restores a machine from wt with the project's network
// policy and no model credential, brings the project in, runs its setup
// as the agent in /workspace, takes away the key it was reached with, and
// captures it as the prebuild. The machine is deleted whatever happens.
//
// wt nil: the driver's machines run on other hosts (vm.HostPrebuilder),
// and the machine is restored from the warm template of the host it
// lands on and saved there as that host's prebuild; the result then has
// no folder here, and Host says where it is.
func (tp Templates) makePrebuild(ctx context.Context, req PrebuildRequest, wt *images.Template, key, digest string, inputs []string) (images.Template, string, error) {
	c := tp.c
	img := imageOf(req.Image)
	vmDir := filepath.Join(img.Dir, layout.PrebuildFolder, layout.TemplateStagingPrefix+randomHex(6)) + ".vm"
	netReq := req.Network
	netReq.Credentials = CredentialsNone // setup never holds a model credential
	netReq, netRec, err := netReq.normalize(c.Driver)
	if err != nil {
		return images.Template{}, "", err
	}
	hk, err := sshx.NewKeyPair("")
	if err != nil {
		return images.Template{}, "", err
	}
	_, pub, err := c.Guests().fleetKey(true)
	if err != nil {
		return images.Template{}, "", err
	}
	m := &Machine{Name: "fleet-prebuild-" + randomHex(3), Dir: vmDir, Image: req.Image.String(), BaseImage: req.Image.Disk, BaseImageSHA256: req.Image.DiskSHA256,
		Arch: req.Image.Arch, Boot: req.Image.Boot, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, HostKey: hk.AuthorizedKey, InstanceID: randomID(),
		Desired: WantRunning, Network: netRec}
	if wt != nil {
		m.BaseImage = wt.Disk()
	} else {
		m.HostWarm = vm.HostWarmMake
	}
	seed := vm.Seed{InstanceID: m.InstanceID, Hostname: templateHostname, User: GuestUser, AuthorizedKey: pub,
		HostKeyPrivate: string(hk.PrivatePEM), HostKeyPublic: hk.AuthorizedKey}
	if netRec != nil {
		seed.Files = guestNetworkFiles(c.Driver.Capabilities().ForwardIP, netRec, "")
	}
	spec, err := c.Net().bootSpec(ctx, m, seed)
	if err != nil {
		return images.Template{}, "", err
	}
	if wt != nil {
		tv := wt.VM()
		spec.Template = &tv
	} else {
		// Its host restores it from the warm template the machines will
		// restore: of their network's shape, the credential proxy's
		// forward too. That proxy gets no credential and no config here,
		// so it answers nothing.
		_, shapeRec, err := req.Network.normalize(c.Driver)
		if err != nil {
			return images.Template{}, "", err
		}
		shaped := *m
		shaped.Network = shapeRec
		if spec.Network, err = c.Net().networkShape(&shaped); err != nil {
			return images.Template{}, "", err
		}
	}
	spec.QueueWait = req.QueueWait
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		c.Guests().sshPool().Drop(m.Name)
		if err := c.Net().deleteMachine(cctx, spec); err != nil {
			// Its folder (a scheduler's job record) is kept, to find it by.
			c.say("prebuild: its machine was not removed (%v); its folder %s says what is left", err, vmDir)
			return
		}
		os.RemoveAll(vmDir)
	}()
	project := filepath.Base(req.Workspace.Dir)
	c.say("prebuild of %s: restoring a machine, bringing the project in, running its setup (%d command(s))", project, len(req.Project.SetupCommands()))
	t0 := time.Now()
	if err := c.Driver.Create(ctx, spec); err != nil {
		return images.Template{}, "", err
	}
	if netRec != nil {
		if err := writeNetworkFiles(m, netReq, ""); err != nil {
			return images.Template{}, "", err
		}
	}
	rt, err := c.Net().startMachine(ctx, spec)
	if err != nil {
		return images.Template{}, "", err
	}
	m.SSHAddr, m.PID = rt.SSHAddr, rt.PID
	if rt.Note != "" {
		c.say("prebuild of %s: %s", project, rt.Note)
	}
	if wt != nil {
		if err := tp.identify(ctx, spec, seed, false); err != nil {
			return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
		}
	}
	if err := c.Guests().waitSSH(ctx, m); err != nil {
		return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
	}
	p, err := c.Workspaces().prepareWorkspace(ctx, req.Workspace)
	if err != nil {
		return images.Template{}, "", err
	}
	if err := c.Workspaces().syncIn(ctx, m, p); err != nil {
		return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
	}
	t1 := time.Now()
	if err := tp.runSetup(ctx, m, req.Project.SetupCommands()); err != nil {
		return images.Template{}, "", err
	}
	setupTook := time.Since(t1)
	c.say("prebuild of %s: setup done in %s", project, setupTook.Round(100*time.Millisecond))
	// Nothing of the fleet's stays in it: the key it was reached with.
	// A git workspace is left as each clone's update expects it.
	finish := "rm -f ~/.ssh/authorized_keys; sync"
	git := p != nil && p.req.Mode == SyncGit
	if git {
		finish = workspace.PrebuildFinishScript(workspace.GuestDir, p.start) + finish
	}
	out, err := c.Guests().guestRun(ctx, m, "finish the prebuild", finish, nil)
	if err != nil {
		return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
	}
	if git {
		if left, cut := workspace.ParseUntracked(out); len(left) > 0 {
			them := "them"
			if len(left) == 1 && !cut {
				them = "it"
			}
			c.say("prebuild of %s: warning: the setup left %s, which git does not ignore: every agent's diff will show %s as its own change (add %s to .gitignore)",
				project, untrackedList(left, cut), them, them)
		}
	}
	c.Guests().sshPool().Drop(m.Name)
	info := vm.PrebuildInfo{Project: project, Setup: req.Project.SetupCommands(), Inputs: inputs, InputsDigest: digest, SetupSec: setupTook.Seconds()}
	if p != nil && p.req.Mode == SyncGit {
		info.Commit = p.start
	}
	if wt == nil {
		host, note, err := vm.SaveHostPrebuild(ctx, c.Driver, spec, key, info)
		if err != nil {
			return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
		}
		c.say("prebuild of %s ready in %s, on %s: %s; machines landing there restore it and skip the setup", project, time.Since(t0).Round(time.Second), host, note)
		return images.Template{TemplateMetaInfo: prebuildMeta(key, req.CPUs, req.MemoryMiB, info, "", 0)}, host, nil
	}
	t, err := capturePrebuild(ctx, c.Driver, img, spec, prebuildMeta(key, req.CPUs, req.MemoryMiB, info, wt.Key, wt.BootSec))
	if err != nil {
		return images.Template{}, "", fmt.Errorf("prebuild: %w", err)
	}
	c.say("prebuild of %s ready in %s (%d MiB): spawns restore it and skip the setup", project, time.Since(t0).Round(time.Second), t.Bytes>>20)
	return t, "", nil
}

// untrackedList names the first few of paths, cleaned for the terminal.
func untrackedList(paths []string, cut bool) string {
	const shown = 5
	var names []string
	for i, p := range paths {
		if i == shown {
			break
		}
		names = append(names, termsafe.Line(p))
	}
	list := strings.Join(names, ", ")
	switch more := len(paths) - len(names); {
	case cut:
		list += " and more"
	case more > 0:
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}

// prebuildMeta is what a prebuild of key records, made on the warm
// template of templateKey.
func prebuildMeta(key string, cpus, memoryMiB int, info vm.PrebuildInfo, templateKey string, bootSec float64) images.TemplateMetaInfo {
	return images.TemplateMetaInfo{Key: key, CPUs: cpus, MemoryMiB: memoryMiB, CreatedAt: time.Now().UTC(), BootSec: bootSec,
		Kind: images.KindPrebuild, TemplateKey: templateKey, Project: info.Project, Setup: info.Setup, Inputs: info.Inputs,
		InputsDigest: info.InputsDigest, SetupSec: info.SetupSec, Commit: info.Commit}
}

// capturePrebuild captures spec's running machine with d as img's
// prebuild of meta.Key: in a staging folder of img's prebuilds, then
// published. The machine runs on; its caller deletes it.
func capturePrebuild(ctx context.Context, d vm.Driver, img images.Image, spec vm.Spec, meta images.TemplateMetaInfo) (images.Template, error) {
	staged := filepath.Join(img.Dir, layout.PrebuildFolder, layout.TemplateStagingPrefix+randomHex(6))
	if err := os.MkdirAll(filepath.Dir(staged), 0o700); err != nil {
		return images.Template{}, err
	}
	defer os.RemoveAll(staged) // published, it is no longer there
	captured, err := vm.Capture(ctx, d, spec, staged)
	if err != nil {
		return images.Template{}, err
	}
	if err := vm.SyncTemplate(captured.Template); err != nil {
		return images.Template{}, err
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(filepath.Join(staged, images.TemplateMeta), append(b, '\n'), 0o600); err != nil {
		return images.Template{}, err
	}
	return images.PublishPrebuild(img, meta.Key, staged)
}

// setupOutput is how much of a failed setup's output its error shows.
const setupOutput = 4 << 10

// runSetup runs the setup commands as the agent in /workspace, each as
// its own step; a failure is an error with the end of its output.
func (tp Templates) runSetup(ctx context.Context, m *Machine, cmds []string) error {
	r, err := tp.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	for _, cmd := range cmds {
		out := bounded.NewTail(setupOutput)
		err := r.Run(ctx, guest.Cmd{Step: "setup: " + cmd, Script: "cd " + workspace.GuestDir + " && exec 2>&1 && exec sh -c " + execx.ShellQuote(cmd), Stdout: out})
		if err != nil {
			return fmt.Errorf("prebuild: setup command %q failed (%v); its output ends:\n%s", cmd, err, termsafe.Text(strings.TrimRight(out.String(), "\n")))
		}
	}
	return nil
}

// spawnPrebuildRequest is the prebuild a spawn of req restores from; ok
// is false when it has none to ask for (no setup, --no-prebuild, or the
// project not in the machine).
func spawnPrebuildRequest(req SpawnRequest) (PrebuildRequest, bool) {
	if req.Project == nil || len(req.Project.SetupCommands()) == 0 || req.NoPrebuild {
		return PrebuildRequest{}, false
	}
	if req.Workspace.Mode != SyncGit && req.Workspace.Mode != SyncRsync {
		return PrebuildRequest{}, false
	}
	return PrebuildRequest{Image: req.Image, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, Arch: req.Arch, Workspace: req.Workspace, Project: *req.Project, Network: req.Network}, true
}

// spawnPrebuild is the prebuild a spawn of req restores from instead of
// the warm template wt, made first if there is none; nil (said why) when
// the project has none or it cannot be made: the machines then run the
// setup themselves.
func (tp Templates) spawnPrebuild(ctx context.Context, req SpawnRequest, wt images.Template) *images.Template {
	preq, ok := spawnPrebuildRequest(req)
	if !ok {
		return nil
	}
	res, err := tp.prebuild(ctx, preq, wt, false)
	if err != nil {
		tp.c.say("no prebuild, so each machine runs the setup: %v", err)
		return nil
	}
	if !res.Made {
		tp.c.say("restoring the prebuild of %s (%s old; setup skipped)", filepath.Base(req.Workspace.Dir), time.Since(res.Template.CreatedAt).Round(time.Second))
	}
	return &res.Template
}

// hostPrebuildMark starts Machine.Prebuild for a machine restored from
// the prebuild its host holds.
const hostPrebuildMark = "on-host:"

// hostPrebuilt is m's Prebuild after a start that returned rt: for a
// machine its host may restore from the prebuild, marked if it did (a
// new job restored from the warm template ran no setup), else was.
func hostPrebuilt(m *Machine, rt vm.Runtime, was string) string {
	if m.HostPrebuild == "" {
		return was
	}
	if !rt.Prebuilt {
		return ""
	}
	h := sha256.Sum256([]byte(m.HostPrebuild))
	return hostPrebuildMark + hex.EncodeToString(h[:8])
}

// spawnHostPrebuild is the key of the prebuild a HostWarmer's machines
// of req restore from on the hosts that hold it, made first (on one host)
// if this host knows of none; "" (said why) when the project has none.
// commit is what its workspace holds (git mode), the key's alone: a
// remade prebuild has another key.
func (tp Templates) spawnHostPrebuild(ctx context.Context, req SpawnRequest, mayMake bool) (nodeKey, commit string) {
	preq, ok := spawnPrebuildRequest(req)
	if !ok {
		return "", ""
	}
	// A spawn that lets queued machines wait does not itself wait long for
	// the prebuild's job: its machines then run the setup.
	preq.QueueWait = 2 * time.Minute
	if req.WaitQueued {
		preq.QueueWait = 0
	}
	res, err := tp.hostPrebuild(ctx, preq, false, mayMake)
	if err != nil {
		tp.c.say("no prebuild, so each machine runs the setup: %v", err)
		return "", ""
	}
	if !res.Made {
		tp.c.say("machines landing on %s, where the prebuild of %s is (%s old), restore it and skip the setup; elsewhere they run it", res.Host, filepath.Base(req.Workspace.Dir), time.Since(res.Template.CreatedAt).Round(time.Second))
	}
	return res.NodeKey, res.Template.Commit
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
