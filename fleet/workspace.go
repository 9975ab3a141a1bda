package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentfleet/agentfleet/internal/bounded"
	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/guest"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/agentfleet/agentfleet/internal/workspace"
)

// Workspaces brings a project into machines and their work back out (git
// or rsync, or a live share), one machine at a time; the Controller
// orchestrates it over several (locking, resuming a suspended one).
type Workspaces struct{ c *Controller }

// Workspaces is the workspace concern of c.
func (c *Controller) Workspaces() Workspaces { return Workspaces{c} }

// DefaultMaxCollect caps what one collect reads from one VM.
const DefaultMaxCollect = 2 << 30

// DefaultMaxEntries caps how many files, folders and links one rsync-mode
// collect unpacks from one VM.
const DefaultMaxEntries = 1 << 20

// WorkspaceRequest is what the user asked spawn to bring in.
type WorkspaceRequest struct {
	Mode     SyncMode
	Dir      string   // the project folder
	Excludes []string // rsync
	Writable bool     // shared
}

// preparedWorkspace is a validated request, with the snapshot every VM
// of this spawn starts from.
type preparedWorkspace struct {
	req         WorkspaceRequest
	repo        workspace.Repo
	base, start string
}

// syncedMarker is touched in the agent's home after every sync and
// collect in rsync mode: files newer than it are uncollected work.
const syncedMarker = ".fleet-synced"

// prepareWorkspace checks the request before anything is made; in git
// mode it also takes the snapshot (the same start for every VM).
func (ws Workspaces) prepareWorkspace(ctx context.Context, req WorkspaceRequest) (*preparedWorkspace, error) {
	p := &preparedWorkspace{req: req}
	switch req.Mode {
	case SyncNone, "":
		return nil, nil
	case SyncGit:
		repo, err := workspace.Open(ctx, ws.c.runner(), req.Dir)
		if err != nil {
			return nil, fmt.Errorf("--sync git: %w (use --sync rsync for a plain folder)", err)
		}
		p.repo = repo
		p.req.Dir = repo.Dir
		if p.base, p.start, err = repo.Snapshot(ctx); err != nil {
			return nil, err
		}
		if p.base != p.start {
			ws.c.say("bringing in %s at %s plus its uncommitted changes", repo.Dir, short(p.base))
		}
	case SyncRsync:
		for _, bin := range []string{"rsync", "ssh"} {
			if _, err := exec.LookPath(bin); err != nil {
				return nil, fmt.Errorf("--sync rsync needs %s on this host: %w", bin, &execx.NotFoundError{Name: bin})
			}
		}
		if fi, err := os.Stat(req.Dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--sync rsync: %s is not a folder", req.Dir)
		}
	case SyncShared:
		if !ws.c.Driver.Capabilities().SharedFolders {
			return nil, fmt.Errorf("--sync shared: the %s driver has no shared folders", ws.c.Driver.Name())
		}
		if v, ok := ws.c.Driver.(vm.ShareValidator); ok {
			if err := v.ValidateShare(&vm.Share{HostDir: req.Dir, Writable: req.Writable}); err != nil {
				return nil, fmt.Errorf("--sync shared: %w", err)
			}
		}
		if req.Writable {
			ws.c.say("warning: --sync shared --writable: the agents can change and delete files in %s directly, and whatever they leave there runs when you next build or open it", req.Dir)
		} else {
			ws.c.say("note: --sync shared: the agents read %s live (read-only); they see any secrets in it", req.Dir)
		}
	}
	return p, nil
}

// record is the machine's workspace record for a prepared request.
func (p *preparedWorkspace) record(vm string) *Workspace {
	if p == nil {
		return nil
	}
	w := &Workspace{Mode: p.req.Mode, Source: p.req.Dir, Excludes: p.req.Excludes, Writable: p.req.Writable}
	if p.req.Mode == SyncGit {
		w.Base, w.Start, w.Branch = p.base, p.start, workspace.BranchPrefix+vm
	}
	return w
}

// fromRecord is the prepared workspace a machine's record describes: the
// start its siblings got, for a machine that could only start later.
func (ws Workspaces) fromRecord(ctx context.Context, w *Workspace) (*preparedWorkspace, error) {
	p := &preparedWorkspace{req: WorkspaceRequest{Mode: w.Mode, Dir: w.Source, Excludes: w.Excludes, Writable: w.Writable}}
	switch w.Mode {
	case SyncGit:
		repo, err := workspace.Open(ctx, ws.c.runner(), w.Source)
		if err != nil {
			return nil, err
		}
		p.repo, p.base, p.start = repo, w.Base, w.Start
	case SyncNone, "":
		return nil, nil
	}
	return p, nil
}

// BringIn brings a project into a running machine's empty /workspace, as
// spawn does (the machine's record is not changed).
func (ws Workspaces) BringIn(ctx context.Context, m *Machine, req WorkspaceRequest) error {
	p, err := ws.prepareWorkspace(ctx, req)
	if err != nil {
		return err
	}
	return ws.syncIn(ctx, m, p)
}

// syncIn brings the project into a freshly booted machine.
func (ws Workspaces) syncIn(ctx context.Context, m *Machine, p *preparedWorkspace) error {
	if p == nil {
		return nil
	}
	t0 := time.Now()
	var err error
	switch p.req.Mode {
	case SyncGit:
		err = ws.gitIn(ctx, m, p)
	case SyncRsync:
		err = ws.rsyncIn(ctx, m, p)
	case SyncShared:
		err = ws.mountShared(ctx, m)
	default:
		return nil
	}
	if err != nil {
		return Named(m.Name, fmt.Errorf("bring in %s: %w", p.req.Dir, err))
	}
	ws.c.say("%s: %s in %s (%s)", m.Name, workspace.GuestDir, time.Since(t0).Round(10*time.Millisecond), p.req.Mode)
	return nil
}

func (ws Workspaces) gitIn(ctx context.Context, m *Machine, p *preparedWorkspace) error {
	r, err := ws.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	if m.Prebuild != "" {
		return ws.gitUpdate(ctx, r, m, p)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(p.repo.Pack(ctx, p.start, pw)) }()
	err = r.Run(ctx, guest.Cmd{Step: "unpack the workspace", Script: workspace.UnpackScript(workspace.GuestDir, workspace.BranchPrefix+m.Name, p.start, m.Name), Stdin: pr})
	pr.Close()
	return err
}

// gitUpdate brings a prebuild's workspace, which holds the project as it
// was and what setup made, to p.start: only the commits since the
// prebuild's are sent (none when it is p.start), or the whole history
// when the host no longer has the prebuild's commit or it is unknown (a
// prebuild on a scheduler's node).
func (ws Workspaces) gitUpdate(ctx context.Context, r *guest.Runner, m *Machine, p *preparedWorkspace) error {
	have := m.PrebuildCommit
	if have != "" && !p.repo.IsCommit(ctx, have) {
		have = ""
	}
	script := func(pack bool) string {
		return workspace.UpdateScript(workspace.GuestDir, workspace.BranchPrefix+m.Name, p.start, m.Name, pack)
	}
	if have == p.start {
		return r.Run(ctx, guest.Cmd{Step: "update the workspace", Script: script(false)})
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(p.repo.PackSince(ctx, p.start, have, pw)) }()
	err := r.Run(ctx, guest.Cmd{Step: "update the workspace", Script: script(true), Stdin: pr})
	pr.Close()
	return err
}

// opensshArgs are the ssh options that reach m with its pinned host key
// (for rsync, which needs the OpenSSH client).
func (ws Workspaces) opensshArgs(m *Machine) ([]string, error) {
	kh := filepath.Join(m.Dir, layout.KnownHostsFile)
	if err := WriteFileAtomic(kh, []byte(m.Name+" "+m.HostKey+"\n"), 0o644); err != nil {
		return nil, err
	}
	host, port, _ := strings.Cut(m.SSHAddr, ":")
	return []string{"ssh", "-p", port, "-i", ws.c.Layout.KeyFile(ws.c.Fleet), "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + kh, "-o", "HostKeyAlias=" + m.Name, "-o", "StrictHostKeyChecking=yes",
		"-o", "CheckHostIP=no", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-l", GuestUser, host}, nil
}

// RsyncArgs is the rsync command line that copies src into a VM: .gitignore
// files honoured, plus the user's excludes. Pure, for tests.
func RsyncArgs(ssh []string, src string, excludes []string) []string {
	args := []string{"-a", "--delete", "-e", execx.ShellJoin(ssh[:len(ssh)-1]), "--filter=:- .gitignore"}
	for _, e := range excludes {
		args = append(args, "--exclude="+e)
	}
	return append(args, strings.TrimRight(src, "/")+"/", ssh[len(ssh)-1]+":"+workspace.GuestDir+"/")
}

func (ws Workspaces) rsyncIn(ctx context.Context, m *Machine, p *preparedWorkspace) error {
	ssh, err := ws.opensshArgs(m)
	if err != nil {
		return err
	}
	if _, err := ws.c.runner().Run(ctx, execx.Cmd{Name: "rsync", Args: RsyncArgs(ssh, p.req.Dir, p.req.Excludes)}); err != nil {
		return err
	}
	r, err := ws.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	return r.Run(ctx, guest.Cmd{Step: "mark the sync", Script: "touch ~/" + syncedMarker})
}

// mountShared mounts the machine's shared folder at /workspace (after
// every boot: spawn and start).
func (ws Workspaces) mountShared(ctx context.Context, m *Machine) error {
	r, err := ws.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	opts := "ro"
	if m.Workspace.Writable {
		opts = "rw"
	}
	caps := ws.c.Driver.Capabilities()
	if caps.ShareMountOptions != "" {
		opts += "," + caps.ShareMountOptions
	}
	cmd := fmt.Sprintf("mountpoint -q %[1]s || sudo mount -t %[4]s -o %[2]s %[3]s %[1]s", workspace.GuestDir, opts, caps.ShareTag, caps.ShareFS)
	return r.Run(ctx, guest.Cmd{Step: "mount the shared folder", Script: cmd})
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// guestState runs StateScript in m (git mode).
func (ws Workspaces) guestState(ctx context.Context, m *Machine, commit bool) (workspace.GuestState, error) {
	out, err := ws.c.Guests().guestRun(ctx, m, "read the state of "+workspace.GuestDir, workspace.StateScript(workspace.GuestDir, m.Name, commit), nil)
	if err != nil {
		return workspace.GuestState{}, err
	}
	return workspace.ParseState(out)
}

// Pending reports whether a running machine has work no collect has
// brought to the host yet, and says what it is.
func (ws Workspaces) Pending(ctx context.Context, m *Machine) (bool, string, error) {
	w := m.Workspace
	if w == nil {
		return false, "", nil
	}
	switch w.Mode {
	case SyncGit:
		st, err := ws.guestState(ctx, m, false)
		if err != nil {
			return false, "", err
		}
		if w.Collected != nil {
			if st.Head == w.Collected.Head && st.Tree == w.Collected.Tree {
				return false, "", nil
			}
		} else if st.Head == w.Start && st.Tree == (workspace.Repo{Runner: ws.c.runner(), Dir: w.Source}).TreeOf(ctx, w.Start) {
			return false, "", nil
		}
		return true, "commits or changes in " + workspace.GuestDir, nil
	case SyncRsync:
		r, err := ws.c.Guests().guestRunner(ctx, m)
		if err != nil {
			return false, "", err
		}
		// Any answer means changed, so its length does not matter.
		out := bounded.NewBuffer(bounded.Answer)
		err = r.Run(ctx, guest.Cmd{Step: "look for changed files", Script: "find " + workspace.GuestDir + " -newer ~/" + syncedMarker + " -print -quit", Stdout: out})
		if err != nil && guest.ExitCode(err) < 0 {
			return false, "", err
		}
		if err != nil || strings.TrimSpace(out.String()) != "" {
			return true, "files changed in " + workspace.GuestDir, nil
		}
	}
	return false, "", nil
}

// CollectOptions tune a collect.
type CollectOptions struct {
	Into       string // rsync: results parent folder ("" = the fleet's results folder)
	MaxBytes   int64  // what one VM may send (0 = DefaultMaxCollect); in git mode also what its objects inflate to (workspace.PackLimits)
	MaxEntries int64  // rsync: files, folders and links one VM may send (0 = DefaultMaxEntries)
}

// checkCollectable refuses a named machine that has nothing to collect.
func checkCollectable(ms []*Machine, all bool) error {
	if all {
		return nil
	}
	for _, m := range ms {
		if m.Workspace == nil || m.Workspace.Mode == SyncNone {
			return fmt.Errorf("%s was spawned without a workspace (--sync none): nothing to collect", m.Name)
		}
		if m.Workspace.Mode == SyncShared {
			return fmt.Errorf("%s uses a shared folder: its changes are already on the host", m.Name)
		}
	}
	return nil
}

func (ws Workspaces) collectOne(ctx context.Context, m *Machine, o CollectOptions) (workspace.Summary, error) {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxCollect // destroy --collect comes here directly
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if m.SSHAddr == "" {
		return workspace.Summary{}, fmt.Errorf("not running (start it with: fleet start %s)", m.Name)
	}
	if m.Workspace.Mode == SyncRsync {
		return ws.collectFiles(ctx, m, o)
	}
	return ws.collectGit(ctx, m, o)
}

func (ws Workspaces) collectGit(ctx context.Context, m *Machine, o CollectOptions) (workspace.Summary, error) {
	w := m.Workspace
	sum := workspace.Summary{Machine: m.Name, Branch: w.Branch}
	repo := workspace.Repo{Runner: ws.c.runner(), Dir: w.Source}
	gs, err := ws.guestState(ctx, m, true)
	if err != nil {
		return sum, err
	}
	if gs.Tip == "" || gs.Tip == w.Start {
		sum.Unchanged = true
		return sum, nil
	}
	if w.Collected != nil && gs.Head == w.Collected.Head && gs.Tree == w.Collected.Tree {
		gs.Tip = w.Collected.Tip // nothing new: keep the commit already collected
	} else if err := ws.fetchPack(ctx, m, repo, gs.Tip, w.Start, o.MaxBytes); err != nil {
		return sum, err
	}
	if !repo.IsCommit(ctx, gs.Tip) {
		return sum, fmt.Errorf("the VM's pack did not contain its tip %s", short(gs.Tip))
	}
	if err := repo.SetBranch(ctx, w.Branch, gs.Tip); err != nil {
		return sum, err
	}
	sum.Tip, sum.Uncommitted = gs.Tip, gs.Tip != gs.Head
	if sum.Commits, sum.Files, sum.Flagged, err = repo.Summarize(ctx, w.Start, gs.Tip); err != nil {
		return sum, err
	}
	w.Collected = &Collected{Head: gs.Head, Tree: gs.Tree, Tip: gs.Tip, At: time.Now().UTC()}
	return sum, nil
}

// fetchPack streams the VM's pack into the host repository; a failed
// import (too large, malformed) ends the VM's session at once.
func (ws Workspaces) fetchPack(ctx context.Context, m *Machine, repo workspace.Repo, tip, start string, max int64) error {
	return ws.readGuestStream(ctx, m, workspace.PackScript(workspace.GuestDir, tip, start), "pack the commits",
		func(r io.Reader) error { return repo.Import(ctx, r, workspace.PackLimits(max)) })
}

// readGuestStream runs script on m and hands its stdout to read. Once read
// returns, the rest of the stream is bounded by finishStream. read's error
// wins over the guest's.
func (ws Workspaces) readGuestStream(ctx context.Context, m *Machine, script, what string, read func(io.Reader) error) error {
	r, err := ws.c.Guests().guestRunner(ctx, m)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := r.Run(sctx, guest.Cmd{Step: what, Script: script, Stdout: pw})
		pw.CloseWithError(err)
		done <- err
	}()
	rerr := read(pr)
	serr := finishStream(rerr, pr, done, cancel)
	if rerr != nil {
		return rerr
	}
	return serr
}

// finishStream ends a VM's stream once the host has read what it needs:
// the rest (tar padding, say) is drained up to a small limit, and a VM
// that keeps sending past it, or does not exit, is cut off, so a hostile
// guest cannot keep collect waiting.
func finishStream(readErr error, pr *io.PipeReader, done <-chan error, cancel context.CancelFunc) error {
	if readErr != nil {
		cancel()
		pr.CloseWithError(readErr)
		return <-done
	}
	const trailing = 1 << 20
	n, _ := io.CopyN(io.Discard, pr, trailing+1)
	if n > trailing {
		cancel()
		pr.CloseWithError(ErrTrailing)
		<-done
		return ErrTrailing
	}
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		return errors.New("the VM did not end its session after the stream")
	}
}

// ErrTrailing says a VM sent more after the end of a pack or tar stream.
var ErrTrailing = errors.New("the VM kept sending after the end of its stream")

// collectFiles copies /workspace into a fresh results folder (rsync mode):
// a tar stream unpacked under an os.Root, then swapped in.
func (ws Workspaces) collectFiles(ctx context.Context, m *Machine, o CollectOptions) (workspace.Summary, error) {
	w := m.Workspace
	sum := workspace.Summary{Machine: m.Name}
	parent := o.Into
	if parent == "" {
		parent = ws.c.Layout.ResultsDir(ws.c.Fleet)
	}
	parent, err := filepath.Abs(parent)
	if err != nil {
		return sum, err
	}
	dest := filepath.Join(parent, m.Name)
	if within(dest, w.Source) || within(w.Source, dest) {
		return sum, fmt.Errorf("results folder %s overlaps the project %s; collect never writes over the source", dest, w.Source)
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return sum, err
	}
	tmp, err := os.MkdirTemp(parent, "."+m.Name+".partial-")
	if err != nil {
		return sum, err
	}
	defer os.RemoveAll(tmp)
	var n int
	err = ws.readGuestStream(ctx, m, "tar -C "+workspace.GuestDir+" -cf - . && touch ~/"+syncedMarker, "tar",
		func(r io.Reader) (err error) { n, err = workspace.Untar(r, tmp, o.MaxBytes, o.MaxEntries); return err })
	if err != nil {
		return sum, err
	}
	if err := os.RemoveAll(dest); err != nil {
		return sum, err
	}
	if err := os.Rename(tmp, dest); err != nil {
		return sum, err
	}
	sum.Into = dest
	w.Collected = &Collected{Into: dest, At: time.Now().UTC()}
	ws.c.say("%s: %d files into %s", m.Name, n, dest)
	return sum, nil
}

// within reports whether p is dir or inside it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
