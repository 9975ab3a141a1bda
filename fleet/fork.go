package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/sshx"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/workspace"
	"golang.org/x/sync/errgroup"
)

// Fork: a running machine is captured at one moment (its disk copied, its
// RAM and devices saved while it stands still, then it runs on) and N
// children restore the capture, as warm clones restore a template: each
// gets its own identity, host key, token and budget; their disks are
// overlays of the captured disk and their RAM maps the captured RAM
// copy-on-write. The capture stays in the fleet's forks folder while a
// child's disk links to it.

// Forks branches running machines.
type Forks struct{ c *Controller }

// Forks is the fork concern of c.
func (c *Controller) Forks() Forks { return Forks{c} }

// ForkRequest is a `fleet fork VM N`.
type ForkRequest struct {
	Source string
	Count  int
	// Tasks[i], if given, is child i's follow-up instruction: it
	// continues the source's conversation. A child without one keeps
	// running what the source ran.
	Tasks   [][]byte
	Session SessionRequest // the profile (continued) and credentials for Tasks
	Force   bool           // skip the host memory check
}

// ForkResult is what a fork made and measured.
type ForkResult struct {
	Source   string        `json:"source"`
	Children []*Machine    `json:"-"`
	Paused   time.Duration `json:"-"` // how long the source stood still
	Ready    time.Duration `json:"-"` // from the start to every child SSH-ready
	Capture  string        `json:"capture"`
	RAMBytes int64         `json:"ram_bytes"`
}

// forkID names a capture folder.
func forkID(source string) string {
	return source + "-" + time.Now().UTC().Format("20060102-150405") + "-" + randomHex(3)
}

// Fork branches the running machine req.Source into req.Count children.
// If anything fails, every child is removed again, the capture too, and
// the source runs on; the state file is untouched.
func (f Forks) Fork(ctx context.Context, req ForkRequest) (ForkResult, error) {
	c := f.c
	res := ForkResult{Source: req.Source}
	t0 := time.Now()
	if len(req.Tasks) > req.Count {
		return res, fmt.Errorf("%d tasks for %d children", len(req.Tasks), req.Count)
	}
	for i, t := range req.Tasks {
		if len(bytes.TrimSpace(t)) == 0 {
			return res, fmt.Errorf("task %d is empty", i+1)
		}
	}
	prof := req.Session.Profile
	if len(req.Tasks) > 0 {
		var err error
		if prof, err = prof.Continuing(); err != nil {
			return res, fmt.Errorf("fork --task: %w", err)
		}
	}
	unlock, err := c.lock(ctx)
	if err != nil {
		return res, err
	}
	defer unlock()
	cur, err := c.Store().Load()
	if err != nil {
		return res, err
	}
	src := cur.Find(req.Source)
	if src == nil {
		return res, fmt.Errorf("no machine %q in fleet %s", req.Source, c.Fleet)
	}
	if _, ok := c.Driver.(vm.Forker); !ok {
		return res, fmt.Errorf("fork %s: the %s driver boots every machine cold and cannot capture a running one (fork needs the qemu driver)", src.Name, c.Driver.Name())
	}
	if w := src.Workspace; w != nil && w.Mode == SyncShared {
		return res, fmt.Errorf("fork %s: its live shared folder (--sync shared) cannot be captured with it; spawn with --sync git or rsync to fork", src.Name)
	}
	// Its hypervisor's word that it runs (a paused or suspended machine is
	// refused); its SSH is not needed, and a handshake costs a second
	// under emulation.
	if err := c.Guests().availability(ctx, src); err != nil {
		return res, fmt.Errorf("fork %s: %w", src.Name, err)
	}
	plan, err := Plan(cur, SpawnRequest{Fleet: c.Fleet, Count: req.Count, CPUs: src.CPUs, MemoryMiB: src.MemoryMiB}, c.Layout)
	if err != nil {
		return res, err
	}
	if !req.Force {
		if err := CheckMemory(req.Count, src.MemoryMiB); err != nil {
			return res, err
		}
	}
	_, pub, err := c.Guests().fleetKey(false)
	if err != nil {
		return res, err
	}

	// The capture: the source stands still only for it.
	id := forkID(src.Name)
	if err := os.MkdirAll(c.Layout.ForksDir(c.Fleet), 0o700); err != nil {
		return res, err
	}
	capDir := filepath.Join(c.Layout.ForksDir(c.Fleet), id)
	c.say("%s: capturing it (it pauses for the copy of its disk and RAM)...", src.Name)
	captured, err := vm.Capture(ctx, c.Driver, c.spec(src, vm.Seed{}), capDir)
	if err != nil {
		return res, err
	}
	at := time.Now().UTC()
	// Prune keeps what the captured disk links to while the capture lives.
	if err := os.WriteFile(filepath.Join(capDir, layout.ForkBackingFile), []byte(src.BaseImage+"\n"), 0o600); err != nil {
		os.RemoveAll(capDir)
		return res, err
	}
	res.Paused, res.Capture, res.RAMBytes = captured.Paused, capDir, captured.RAMBytes
	c.say("%s: captured (paused %s, %d MiB of RAM); it runs on", src.Name, captured.Paused.Round(time.Millisecond), captured.RAMBytes>>20)

	children := make([]*Machine, len(plan))
	var created []*Machine
	var mu sync.Mutex
	ok := false
	defer func() {
		if !ok {
			c.rollback(created)
			os.RemoveAll(capDir)
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	heads := make([]string, len(plan))
	for i, p := range plan {
		g.Go(func() error {
			m, err := f.child(gctx, src, p, captured.Template, pub, func(m *Machine) {
				mu.Lock()
				created = append(created, m)
				mu.Unlock()
			})
			if err != nil {
				return err
			}
			children[i] = m
			heads[i], err = f.workspace(gctx, src, m, at)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("fork cancelled: %w", ctx.Err())
		}
		return res, err
	}
	res.Ready = time.Since(t0)
	if err := f.branches(ctx, src, children, heads); err != nil {
		return res, err
	}
	for i, m := range children {
		if i >= len(req.Tasks) {
			break // the rest run on what the source ran
		}
		task := req.Tasks[i]
		if err := c.Sessions().KillSession(ctx, m); err != nil && !strings.Contains(err.Error(), "has no agent session") {
			return res, err
		}
		r := req.Session
		r.Task, r.Profile, r.Setup = task, prof, nil
		if err := c.Sessions().StartSession(ctx, m, r); err != nil {
			return res, err
		}
	}
	cur.Machines = append(cur.Machines, children...)
	if err := c.Store().Save(cur); err != nil {
		return res, fmt.Errorf("save state: %w", err)
	}
	ok = true
	res.Children = children
	if err := c.writeKnownHosts(cur); err != nil {
		return res, err
	}
	c.say("%s: forked into %d in %s (paused %s)", src.Name, len(children), res.Ready.Round(100*time.Millisecond), res.Paused.Round(time.Millisecond))
	return res, nil
}

// forkChild makes and restores one child of a capture, with its own
// identity, and waits until it answers SSH.
func (f Forks) child(ctx context.Context, src *Machine, p PlannedMachine, tpl vm.Template, pub string, made func(*Machine)) (*Machine, error) {
	c := f.c
	t0 := time.Now()
	hk, err := sshx.NewKeyPair("")
	if err != nil {
		return nil, err
	}
	m := &Machine{
		Name: p.Name, Index: p.Index, Image: src.Image, BaseImage: tpl.Disk, Boot: src.Boot, Arch: src.Arch,
		CPUs: src.CPUs, MemoryMiB: src.MemoryMiB, Dir: p.Dir, HostKey: hk.AuthorizedKey, InstanceID: randomID(),
		Desired: WantRunning, CreatedAt: time.Now().UTC(), ForkOf: src.Name, Network: src.Network,
	}
	if w := src.Workspace; w != nil {
		cp := *w
		cp.Collected, cp.PendingAtStop, cp.ForkPoint = nil, nil, ""
		if cp.Mode == SyncGit {
			cp.Branch = workspace.BranchPrefix + m.Name
		}
		m.Workspace = &cp
	}
	made(m)
	token := newToken()
	seed := vm.Seed{InstanceID: m.InstanceID, Hostname: m.Name, User: GuestUser, AuthorizedKey: pub,
		HostKeyPrivate: string(hk.PrivatePEM), HostKeyPublic: hk.AuthorizedKey}
	if m.Network != nil {
		seed.Files = guestNetworkFiles(c.Driver.Capabilities().ForwardIP, m.Network, token)
	}
	spec, err := c.Net().bootSpec(ctx, m, seed)
	if err != nil {
		return nil, err
	}
	spec.Template = &tpl
	// It runs its source's processes at once: off the network until it
	// has its own identity.
	spec.Offline = true
	if err := c.Driver.Create(ctx, spec); err != nil {
		return nil, err
	}
	if m.Network != nil {
		if err := writeForkNetworkFiles(src, m, token); err != nil {
			return nil, Named(m.Name, err)
		}
	}
	t1 := time.Now()
	rt, err := c.Net().startMachine(ctx, spec)
	if err != nil {
		return nil, err
	}
	m.SSHAddr, m.PID, m.StartedAt = rt.SSHAddr, rt.PID, time.Now().UTC()
	t2 := time.Now()
	if err := c.Templates().identify(ctx, spec, seed, true); err != nil {
		return nil, Named(m.Name, fmt.Errorf("restored from the fork, but: %w", err))
	}
	if err := vm.SetLink(ctx, c.Driver, spec, true); err != nil {
		return nil, Named(m.Name, err)
	}
	if err := c.Guests().waitSSH(ctx, m); err != nil {
		return nil, err
	}
	c.say("%s: forked from %s, SSH-ready in %s (restore %s, identity %s)", m.Name, src.Name, time.Since(t0).Round(10*time.Millisecond),
		t2.Sub(t1).Round(10*time.Millisecond), time.Since(t2).Round(10*time.Millisecond))
	return m, nil
}

// forkWorkspace makes a child's workspace its own (git: its branch, the
// source's uncommitted work as one labelled commit, the same in every
// child) and returns the fork point it starts from.
func (f Forks) workspace(ctx context.Context, src, m *Machine, at time.Time) (string, error) {
	c := f.c
	w := m.Workspace
	if w == nil || w.Mode != SyncGit {
		if w != nil && w.Mode == SyncRsync {
			// Changes are what is newer than the sync marker: from now.
			_, err := c.Guests().guestRun(ctx, m, "mark the fork point", "touch ~/"+syncedMarker, nil)
			return "", err
		}
		return "", nil
	}
	out, err := c.Guests().guestRun(ctx, m, "make the workspace the fork's own", workspace.ForkScript(workspace.GuestDir, w.Branch, src.Name, m.Name, at.Unix()), nil)
	if err != nil {
		return "", err
	}
	head, _ := strings.CutPrefix(strings.TrimSpace(string(out)), "head=")
	if !workspace.IsObjectID(head) {
		return "", Named(m.Name, fmt.Errorf("the fork point it reported is unreadable: %.80q", out))
	}
	return head, nil
}

// branches brings each child's fork point into the host repository and
// starts the child's branch there; its diff is what it did after the
// fork. A fork point must descend from the source's start: the source's
// work before the fork stays in what collect, flagged files and apply
// count (Start is the source's).
func (f Forks) branches(ctx context.Context, src *Machine, children []*Machine, heads []string) error {
	c := f.c
	w := src.Workspace
	if w == nil || w.Mode != SyncGit {
		return nil
	}
	repo := workspace.Repo{Runner: c.runner(), Dir: w.Source}
	for i, m := range children {
		point := heads[i]
		if !repo.IsCommit(ctx, point) {
			if err := c.Workspaces().fetchPack(ctx, m, repo, point, w.Start, DefaultMaxCollect); err != nil {
				return fmt.Errorf("%s: bring the fork point to the host: %w", m.Name, err)
			}
			if !repo.IsCommit(ctx, point) {
				return fmt.Errorf("%s's pack did not contain its fork point %s", m.Name, short(point))
			}
		}
		if !repo.IsAncestor(ctx, w.Start, point) {
			return fmt.Errorf("%s's fork point %s does not descend from %s's start %s", m.Name, short(point), src.Name, short(w.Start))
		}
		if err := repo.SetBranch(ctx, m.Workspace.Branch, point); err != nil {
			return err
		}
		m.Workspace.ForkPoint = point
	}
	return nil
}

// pruneForkCaptures removes the fleet's captures no machine's disk links
// to any more.
func pruneForkCaptures(l Layout, fleet string, s *State) error {
	dir := l.ForksDir(fleet)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	used := map[string]bool{}
	for _, m := range s.Machines {
		for _, d := range diskChain(m.BaseImage) {
			used[filepath.Dir(d)] = true
		}
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !used[p] {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
