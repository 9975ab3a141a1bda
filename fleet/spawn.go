package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/images"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/provision"
	"golang.org/x/sync/errgroup"
)

// Spawn plans and makes req.Count machines: clones and boots run in
// parallel; if any fails, or ctx is cancelled, every machine this spawn
// made is removed again (newest first) and the state file is untouched.
func (c *Controller) Spawn(ctx context.Context, req SpawnRequest) ([]*Machine, error) {
	st := c.Store()
	unlockOnce, err := c.lock(ctx)
	if err != nil {
		return nil, err
	}
	var unlocked sync.Once
	unlock := func() { unlocked.Do(unlockOnce) }
	defer unlock()
	cur, err := st.Load()
	if err != nil {
		return nil, err
	}
	plan, err := Plan(cur, req, c.Layout)
	if err != nil {
		return nil, err
	}
	if err := c.Driver.Validate(ctx); err != nil {
		return nil, err
	}
	if err := CheckArch(req.Image, req.Arch, c.Driver); err != nil {
		return nil, err
	}
	if av, ok := c.Driver.(vm.ArchValidator); ok {
		if err := av.ValidateArch(ctx, req.Image.Arch); err != nil {
			return nil, err
		}
	}
	// A scheduler's machines run on its nodes, sized by it.
	if _, scheduled := c.Driver.(vm.Scheduled); !req.Force && !scheduled {
		if err := CheckMemory(req.Count, req.MemoryMiB); err != nil {
			return nil, err
		}
	}
	netReq, netRec, err := req.Network.normalize(c.Driver)
	if err != nil {
		return nil, err
	}
	ws, err := c.Workspaces().prepareWorkspace(ctx, req.Workspace)
	if err != nil {
		return nil, err
	}
	_, pub, err := c.Guests().fleetKey(true)
	if err != nil {
		return nil, err
	}
	if c.BeforeBoot != nil {
		c.BeforeBoot()
	}

	// Identity for each machine: a host key generated here, so it is
	// pinned before the machine ever answers.
	machines := make([]*Machine, len(plan))
	seeds := make([]vm.Seed, len(plan))
	tokens := make([]string, len(plan))
	for i, p := range plan {
		hk, err := sshx.NewKeyPair("")
		if err != nil {
			return nil, err
		}
		id := randomID()
		machines[i] = &Machine{
			Name: p.Name, Index: p.Index, Image: req.Image.String(), BaseImage: req.Image.Disk, BaseImageSHA256: req.Image.DiskSHA256, Boot: req.Image.Boot, Arch: req.Image.Arch,
			CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, Dir: p.Dir, HostKey: hk.AuthorizedKey,
			InstanceID: id, Desired: WantRunning, CreatedAt: time.Now().UTC(), Workspace: ws.record(p.Name),
			Network: netRec, IdleSuspendSec: int(req.IdleSuspend / time.Second),
		}
		tokens[i] = newToken()
		seeds[i] = vm.Seed{InstanceID: id, Hostname: p.Name, User: GuestUser, AuthorizedKey: pub,
			HostKeyPrivate: string(hk.PrivatePEM), HostKeyPublic: hk.AuthorizedKey}
		if netRec != nil {
			seeds[i].Files = guestNetworkFiles(c.Driver.Capabilities().ForwardIP, netRec, tokens[i])
		}
	}

	if req.IdleSuspend > 0 {
		if why := cannotPark(c, machines[0]); why != "" {
			c.say("idle_suspend is off for these machines: %s", why)
			for _, m := range machines {
				m.IdleSuspendSec = 0
			}
		}
	}

	var tpl *images.Template
	if vm.WarmsOnHost(c.Driver) {
		hw := c.Templates().hostWarm(req)
		pre, commit := "", ""
		if hw != vm.HostWarmOff {
			pre, commit = c.Templates().spawnHostPrebuild(ctx, req, hw == vm.HostWarmMake)
		}
		for _, m := range machines {
			// The commit counts only if its host restores the prebuild
			// (hostPrebuilt marks Prebuild then).
			m.HostWarm, m.HostPrebuild, m.PrebuildCommit = hw, pre, commit
		}
	} else {
		tpl = c.warmTemplate(ctx, req, netRec)
	}
	prebuilt := ""
	if tpl != nil {
		if pre := c.Templates().spawnPrebuild(ctx, req, *tpl); pre != nil {
			tpl, prebuilt = pre, pre.Dir
		}
	}

	names := make([]string, len(machines))
	for i, m := range machines {
		names[i] = m.Name
	}
	progress := newSpawnProgress(c.Layout, c.Fleet, req.Image.String(), names)
	defer progress.done()

	var created []*Machine // in creation order, for LIFO rollback
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	limit := c.Parallel
	if limit < 1 {
		limit = len(plan)
	}
	g.SetLimit(limit)
	start := time.Now()
	for i := range machines {
		m, seed := machines[i], seeds[i]
		g.Go(func() error {
			t0 := time.Now()
			mu.Lock()
			created = append(created, m) // Create may leave files even when it fails
			mu.Unlock()
			spec, err := c.Net().bootSpec(gctx, m, seed)
			if err != nil {
				return err
			}
			if tpl != nil {
				tv := tpl.VM()
				spec.Template = &tv
				m.BaseImage = tpl.Disk() // what its disk links to, for prune
				m.Prebuild = prebuilt
				if prebuilt != "" {
					m.PrebuildCommit = tpl.Commit
				}
			}
			if err := c.Driver.Create(gctx, spec); err != nil {
				return err
			}
			if netRec != nil {
				if err := writeNetworkFiles(m, netReq, tokens[i]); err != nil {
					return fmt.Errorf("%s: %w", m.Name, err)
				}
			}
			c.say("%s: cloned %s in %s", m.Name, req.Image, time.Since(t0).Round(time.Millisecond))
			t1 := time.Now()
			spec.QueueWait = queueGrace
			rt, err := c.Net().startMachine(gctx, spec)
			if queued, qerr := queuedStart(m, err); queued {
				c.say("%s: %v", m.Name, err)
				progress.set(m.Name, PhaseQueued)
				return nil
			} else if qerr != nil {
				return qerr
			}
			m.SSHAddr, m.PID, m.StartedAt = rt.SSHAddr, rt.PID, time.Now().UTC()
			m.Prebuild = hostPrebuilt(m, rt, m.Prebuild)
			if rt.Note != "" {
				c.say("%s: %s", m.Name, rt.Note)
			}
			if tpl != nil {
				t2 := time.Now()
				if err := c.Templates().identify(gctx, spec, seed, false); err != nil {
					return Named(m.Name, fmt.Errorf("restored from the warm template, but: %w", err))
				}
				c.say("%s: restored from the %s in %s (restore %s, identity %s; ssh on %s)", m.Name, map[bool]string{false: "warm template", true: "prebuild"}[prebuilt != ""], time.Since(t0).Round(10*time.Millisecond),
					t2.Sub(t1).Round(10*time.Millisecond), time.Since(t2).Round(10*time.Millisecond), rt.SSHAddr)
			} else {
				c.say("%s: booting (ssh on %s)", m.Name, rt.SSHAddr)
			}
			progress.set(m.Name, PhaseBooting)
			if err := c.Guests().waitSSH(gctx, m); err != nil {
				return err
			}
			progress.set(m.Name, PhaseSyncing)
			if err := c.Workspaces().syncIn(gctx, m, ws); err != nil {
				return err
			}
			c.say("%s: ready in %s", m.Name, time.Since(t0).Round(100*time.Millisecond))
			// Each agent starts as soon as its own machine is ready.
			if i < len(req.Sessions) {
				progress.set(m.Name, PhaseStarting)
				if err := c.Sessions().StartSession(gctx, m, req.Sessions[i]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("spawn cancelled: %w", ctx.Err())
		}
		c.rollback(created)
		return nil, err
	}
	if !req.WaitQueued {
		for _, m := range machines {
			if r := sessionFor(req, machines, m); m.Queued && r != nil {
				m.QueuedTask = &QueuedTask{Task: r.Task, Profile: r.Profile, Setup: r.Setup}
			}
		}
	}
	cur.Driver = c.Driver.Name()
	cur.Machines = append(cur.Machines, machines...)
	if err := st.Save(cur); err != nil {
		c.rollback(created)
		return nil, fmt.Errorf("save state: %w", err)
	}
	if err := c.writeKnownHosts(cur); err != nil {
		return machines, err
	}
	if machines[0].IdleSuspendSec > 0 {
		ensureParker(c) // under the lock, after the save: see ensureParker
	}
	var queued []string
	for _, m := range machines {
		if m.Queued {
			queued = append(queued, m.Name)
		}
	}
	if len(queued) == 0 {
		c.say("%d machine(s) ready in %s", len(machines), time.Since(start).Round(100*time.Millisecond))
		return machines, nil
	}
	c.say("%d machine(s) started in %s, %d still queued: %s", len(machines)-len(queued), time.Since(start).Round(100*time.Millisecond), len(queued), strings.Join(queued, " "))
	unlock() // the queue may take hours: other commands go on meanwhile
	if !req.WaitQueued {
		logPath, err := startWhenScheduled(c, queued)
		if err != nil {
			return machines, fmt.Errorf("start the queued machines later: %w (fleet start %s does it)", err, strings.Join(queued, " "))
		}
		c.say("they start when Slurm runs them (log: %s); fleet ls shows why they wait", logPath)
		for _, m := range machines {
			if m.QueuedTask != nil {
				c.say("%s: its agent starts with its task once it runs", m.Name)
			}
		}
		return machines, nil
	}
	if err := c.Start(ctx, queued, false, StartOptions{}); err != nil {
		return machines, err
	}
	for _, m := range machines {
		if r := sessionFor(req, machines, m); m.Queued && r != nil {
			if err := c.Sessions().StartSession(ctx, m, *r); err != nil {
				return machines, err
			}
		}
	}
	c.say("%d machine(s) ready in %s", len(machines), time.Since(start).Round(100*time.Millisecond))
	return machines, nil
}

// sessionFor is the session req asks for on m, one of machines.
func sessionFor(req SpawnRequest, machines []*Machine, m *Machine) *SessionRequest {
	for i, x := range machines {
		if x == m && i < len(req.Sessions) {
			return &req.Sessions[i]
		}
	}
	return nil
}

// warmTemplate is the template a warm spawn restores from, or nil with a
// one-line reason said when its machines must boot cold.
func (c *Controller) warmTemplate(ctx context.Context, req SpawnRequest, n *Network) *images.Template {
	if req.Warm == WarmNever {
		c.say("cold boot: --cold")
		return nil
	}
	why := ""
	switch {
	case !c.Driver.Capabilities().Snapshots:
		why = "the " + c.Driver.Name() + " driver cannot restore saved machines"
	case req.Workspace.Mode == SyncShared:
		why = "--sync shared: a live virtiofs share cannot be saved and restored"
	case !provision.CanWarm(req.Image.Recipe):
		why = fmt.Sprintf("%s (recipe %s) has no guest agent to give a restored clone its identity", req.Image, req.Image.Recipe)
	}
	if why == "" {
		t, _, err := c.Templates().template(ctx, req.Image, req.CPUs, req.MemoryMiB, n, req.Warm != WarmExisting)
		switch {
		case err == nil:
			return &t
		case errors.Is(err, errNoTemplate):
			why = fmt.Sprintf("no warm template of %s for %d CPUs and %d MiB, and --no-warm makes none (fleet image warm %s --cpus %d --memory %dM)",
				req.Image, req.CPUs, req.MemoryMiB, req.Image, req.CPUs, req.MemoryMiB)
		default:
			why = "no warm template: " + err.Error()
		}
	}
	c.say("cold boot instead of a warm restore: %s", why)
	return nil
}

// keepConsole copies a machine's serial console out of its folder before
// rollback removes the folder, and returns where (""; nothing to keep).
func (c *Controller) keepConsole(m *Machine) string {
	b, err := os.ReadFile(filepath.Join(m.Dir, layout.SerialFile))
	if err != nil || len(b) == 0 {
		return ""
	}
	dir := c.Layout.RolledBackDir(c.Fleet)
	dst := filepath.Join(dir, m.Name+"."+layout.SerialFile)
	if os.MkdirAll(dir, 0o700) != nil || os.WriteFile(dst, b, 0o600) != nil {
		return ""
	}
	return dst
}

// rollback deletes machines newest first on a fresh, time-boxed context.
func (c *Controller) rollback(created []*Machine) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for i := len(created) - 1; i >= 0; i-- {
		m := created[i]
		c.Guests().sshPool().Drop(m.Name)
		kept := c.keepConsole(m)
		if err := c.Net().deleteMachine(ctx, c.spec(m, vm.Seed{})); err != nil {
			c.say("%s: rollback failed: %v", m.Name, err)
			continue
		}
		if kept != "" {
			c.say("%s: rolled back (its serial console is kept: %s)", m.Name, kept)
			continue
		}
		c.say("%s: rolled back", m.Name)
	}
}
