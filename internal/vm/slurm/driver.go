package slurm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/execx"
	"github.com/agentfleet/agentfleet/internal/layout"
	slurmcli "github.com/agentfleet/agentfleet/internal/slurm"
	"github.com/agentfleet/agentfleet/internal/vm"
	"github.com/hashicorp/go-hclog"
)

// Driver runs machines as Slurm jobs. It is the controller's side: every
// call is a Slurm command (sbatch, squeue, scontrol, scancel, srun) run
// through Runner on this host.
type Driver struct {
	Runner   execx.Runner
	Settings slurmcli.Settings
	// Self is the fleet binary's path on the nodes (the job execs it).
	Self string
	// NodeRoot is the node-local folder for machines and images ("":
	// DefaultNodeRoot); %n is the node's name.
	NodeRoot string
	// Node are the facts of the driver the nodes run (QEMU): the guest
	// sees the same forward address, image format and boot times.
	Node vm.Capabilities
	// Poll is how often a waiting Start asks squeue (0: a second), and
	// how long one squeue answer for all the user's jobs is reused.
	Poll time.Duration
	Log  hclog.Logger
	// Registry, if set, is where a node pulls an image file that is not
	// on its shared path (fleet.hcl's slurm image_registry).
	Registry *ImageRegistry

	jobs jobsCache
}

// jobsCache is one squeue answer for all of this user's jobs, shared by
// the questions asked within its life: fleet ls asks about each machine,
// and each of spawn's starts polls its job, so 500 machines cost one
// squeue a second, not 500 (slurmctld answers every one). One refresh
// runs at a time; the questions asked meanwhile wait for its answer.
type jobsCache struct {
	mu       sync.Mutex
	at       time.Time // when the answer came
	jobs     map[string]slurmcli.JobInfo
	ok       bool
	inFlight chan struct{} // closed when the running refresh ends
}

// cachedJob is id's line in the user's squeue answer, asked again once
// the answer is older than the poll interval; ok is false when squeue did
// not answer or does not list id (then the caller asks about id alone).
func (d *Driver) cachedJob(ctx context.Context, id string) (slurmcli.JobInfo, bool) {
	c := &d.jobs
	for {
		c.mu.Lock()
		if !c.at.IsZero() && time.Since(c.at) < d.poll() {
			j, found := c.jobs[id]
			ok := c.ok && found
			c.mu.Unlock()
			return j, ok
		}
		if wait := c.inFlight; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return slurmcli.JobInfo{}, false
			}
		}
		done := make(chan struct{})
		c.inFlight = done
		c.mu.Unlock()

		jobs, ok := d.userJobs(ctx)
		c.mu.Lock()
		if ctx.Err() == nil { // a cancelled question leaves the old answer
			c.at, c.jobs, c.ok = time.Now(), jobs, ok
		}
		c.inFlight = nil
		close(done)
		c.mu.Unlock()
		if ctx.Err() != nil {
			return slurmcli.JobInfo{}, false
		}
	}
}

// userJobs is squeue's list of this user's jobs. The list holds whatever
// else the user runs (array, heterogeneous and multi-node jobs, whose
// lines fleet's parser refuses): a line that does not parse is left out,
// and a job of fleet's it would have been is asked about alone.
func (d *Driver) userJobs(ctx context.Context) (map[string]slurmcli.JobInfo, bool) {
	out, err := d.slurm(ctx, "squeue", slurmcli.SqueueUserArgs(os.Getuid())...)
	if err != nil || len(out) > slurmcli.MaxOutput {
		return nil, false
	}
	jobs := map[string]slurmcli.JobInfo{}
	for _, line := range strings.Split(string(out), "\n") {
		list, err := slurmcli.ParseSqueue(line)
		if err != nil || len(list) != 1 {
			continue
		}
		jobs[list[0].ID] = list[0]
	}
	return jobs, true
}

func (d *Driver) poll() time.Duration {
	if d.Poll <= 0 || d.Poll > time.Second {
		return time.Second
	}
	return d.Poll
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return "slurm" }

// Capabilities are the node driver's, less what a job cannot do: no
// shared folders (the project is on this host), no snapshots (a job's
// state lives on its node and goes with it), no guest agent channel.
func (d *Driver) Capabilities() vm.Capabilities {
	c := d.Node
	c.Snapshots, c.SharedFolders = false, false
	c.ShareFS, c.ShareTag, c.ShareMountOptions = "", "", ""
	c.LinkedClones = true
	if c.ImageFormat == "" {
		c.ImageFormat = "qcow2"
	}
	// Whether a node emulates is known only once the job runs: allow for
	// it, and for a node's first copy of the image.
	c.BootTimeout = max(c.BootTimeout, c.EmulatedBootTimeout, 5*time.Minute)
	c.EmulatedBootTimeout = max(c.EmulatedBootTimeout, c.BootTimeout)
	c.Arches = []vm.Arch{vm.AMD64}
	// Whether a node has KVM is the node's to say, at start.
	c.Accelerated = true
	return c
}

// Validate checks the settings and that slurmctld answers.
func (d *Driver) Validate(ctx context.Context) error {
	if err := d.Settings.Validate(); err != nil {
		return err
	}
	if d.Self == "" || !filepath.IsAbs(d.Self) {
		return fmt.Errorf("slurm: the fleet binary's path on the nodes must be absolute, got %q", d.Self)
	}
	if _, err := d.slurm(ctx, "sinfo", "--noheader", "--format=%P"); err != nil {
		return fmt.Errorf("slurm: the cluster does not answer (is slurmctld up, and SLURM_CONF right?): %w", err)
	}
	return nil
}

// job is what the controller keeps of a machine's job, in its folder.
type job struct {
	ID string `json:"id"`
	// Root and Self are the node folder and fleet binary it was
	// submitted with: later commands reach it the same way.
	Root string `json:"root"`
	Self string `json:"self"`
	// Registry is where its node pulls image files it lacks, as fleet.hcl
	// said at submit: a later start (a queued machine's, in the
	// background, from another folder) asks the same.
	Registry *ImageRegistry `json:"registry,omitempty"`
	Node     string         `json:"node,omitempty"`
	NodeAddr string         `json:"node_addr,omitempty"`
	SSHAddr  string         `json:"ssh_addr,omitempty"` // set once the machine started on the node
	// Prebuilt: its node restored it from the project's prebuild.
	Prebuilt bool   `json:"prebuilt,omitempty"`
	Accel    string `json:"accel,omitempty"`
	// Cancelled: fleet itself ended the job (destroy), so its end is
	// not a loss.
	Cancelled bool `json:"cancelled,omitempty"`
}

func jobPath(s vm.Spec) string { return filepath.Join(s.Dir, layout.SlurmJobFile) }

func loadJob(s vm.Spec) (job, bool, error) {
	b, err := os.ReadFile(jobPath(s))
	if errors.Is(err, os.ErrNotExist) {
		return job{}, false, nil
	}
	if err != nil {
		return job{}, false, err
	}
	var j job
	if err := json.Unmarshal(b, &j); err != nil || !jobIDRe.MatchString(j.ID) {
		return job{}, false, fmt.Errorf("%s is damaged: remove the machine with fleet destroy --force", jobPath(s))
	}
	return j, true, nil
}

func saveJob(s vm.Spec, j job) error {
	b, _ := json.Marshal(j)
	return writeOwnerOnly(jobPath(s), b)
}

// Create checks what a job can run and makes the machine's folder here;
// everything else is made on the node when the job runs.
func (d *Driver) Create(ctx context.Context, s vm.Spec) error {
	switch {
	case s.Share != nil:
		return errors.New("slurm: a machine on a cluster node cannot share a folder of this host: use --sync git or rsync")
	case s.Template != nil || s.MemoryFile != "":
		return errors.New("slurm: a machine's warm template is its node's own (Spec.HostWarm), never one of this host")
	case s.BaseImageSHA256 == "":
		return fmt.Errorf("slurm: %s has no digest to check its copies on the nodes against", s.BaseImage)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	// The seed goes to the node when the job runs, which may be a later
	// command's start (a queued machine): kept as the seed disk would be.
	b, err := json.Marshal(s.Seed)
	if err != nil {
		return err
	}
	return writeOwnerOnly(filepath.Join(s.Dir, layout.SlurmSeedFile), b)
}

func writeOwnerOnly(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// createdSeed is the seed Create kept.
func createdSeed(s vm.Spec) (vm.Seed, error) {
	var seed vm.Seed
	b, err := os.ReadFile(filepath.Join(s.Dir, layout.SlurmSeedFile))
	if err != nil {
		return seed, fmt.Errorf("slurm: %s was not created here: %w", s.Name, err)
	}
	return seed, json.Unmarshal(b, &seed)
}

// script is the job: it only execs the node process. Nothing in it is
// secret, since Slurm keeps it (scontrol write batch_script, the state
// folder).
func (d *Driver) root() string {
	if d.NodeRoot == "" {
		return DefaultNodeRoot
	}
	return d.NodeRoot
}

func (d *Driver) script() string {
	root := d.root()
	return "#!/bin/sh\n# an agentfleet machine: the fleet binary boots it on this node and removes it when the job ends\nexec " +
		execx.ShellQuote(d.Self) + " " + NodeCommand + " run --root " + execx.ShellQuote(root) + "\n"
}

// Start submits s's job if it has none running or queued, waits for it to
// run (up to s.QueueWait, else ErrQueued) and starts the machine in it.
func (d *Driver) Start(ctx context.Context, s vm.Spec) (vm.Runtime, error) {
	j, ok, err := loadJob(s)
	if err != nil {
		return vm.Runtime{}, err
	}
	if ok {
		info, err := d.query(ctx, j.ID)
		if err != nil {
			return vm.Runtime{}, err
		}
		if info.State.Running() && j.SSHAddr != "" {
			return vm.Runtime{SSHAddr: j.SSHAddr, Prebuilt: j.Prebuilt}, nil
		}
		if info.State.Ended() {
			ok = false // a new job
		}
	}
	if !ok {
		id, err := d.submit(ctx, s)
		if err != nil {
			return vm.Runtime{}, err
		}
		j = job{ID: id, Root: d.root(), Self: d.Self, Registry: d.Registry}
		if err := saveJob(s, j); err != nil {
			_ = d.cancel(context.Background(), id)
			return vm.Runtime{}, err
		}
	}
	info, err := d.waitRunning(ctx, j.ID, s.QueueWait)
	if err != nil {
		return vm.Runtime{}, err
	}
	j.Node = info.Node
	nodeArgs, err := slurmcli.ScontrolNodeArgs(info.Node)
	if err != nil {
		return vm.Runtime{}, err
	}
	out, err := d.slurm(ctx, "scontrol", nodeArgs...)
	if err != nil {
		return vm.Runtime{}, err
	}
	if j.NodeAddr, err = slurmcli.ParseNodeAddr(string(out)); err != nil {
		return vm.Runtime{}, fmt.Errorf("node %s: %w", info.Node, err)
	}
	if j.NodeAddr, err = resolveNode(ctx, j.NodeAddr); err != nil {
		return vm.Runtime{}, fmt.Errorf("node %s: %w", info.Node, err)
	}
	req, err := d.startRequest(s, j.NodeAddr, j.Registry)
	if err != nil {
		return vm.Runtime{}, err
	}
	rep, err := d.call(ctx, j, req)
	if err != nil {
		return vm.Runtime{}, fmt.Errorf("start %s on node %s (job %s): %w", s.Name, j.Node, j.ID, err)
	}
	if host, port, err := net.SplitHostPort(rep.SSHAddr); err != nil || host != j.NodeAddr || port == "" || strings.Trim(port, "0123456789") != "" {
		return vm.Runtime{}, fmt.Errorf("start %s: node %s answered an SSH address %q that is not its own", s.Name, j.Node, rep.SSHAddr)
	}
	j.SSHAddr, j.Accel, j.Prebuilt = rep.SSHAddr, rep.Accel, rep.Prebuilt && s.HostPrebuild != ""
	if j.Accel == "tcg" && d.Log != nil {
		d.Log.Warn("node has no hardware acceleration: the machine runs emulated, many times slower", "node", j.Node, "vm", s.Name)
	}
	if err := saveJob(s, j); err != nil {
		return vm.Runtime{}, err
	}
	note := ""
	if rep.Note != "" {
		note = "on " + j.Node + ": " + firstLine(rep.Note, 600)
	}
	return vm.Runtime{SSHAddr: j.SSHAddr, Note: note, Prebuilt: j.Prebuilt}, nil
}

// SaveHostPrebuild implements vm.HostPrebuilder: the job's process
// captures its running machine into its node's store as the prebuild of
// key, where later jobs on that node asking for it restore it.
func (d *Driver) SaveHostPrebuild(ctx context.Context, s vm.Spec, key string, info vm.PrebuildInfo) (host, note string, err error) {
	j, ok, err := loadJob(s)
	if err != nil {
		return "", "", err
	}
	if !ok || j.SSHAddr == "" {
		return "", "", fmt.Errorf("slurm: %s has not started, so there is nothing to save", s.Name)
	}
	rep, err := d.call(ctx, j, request{Op: "save-prebuild", Prebuild: &prebuildSave{Key: key, Info: info}})
	if err != nil {
		return "", "", fmt.Errorf("save the prebuild on node %s (job %s): %w", j.Node, j.ID, err)
	}
	return j.Node, firstLine(rep.Note, 300), nil
}

var _ vm.HostPrebuilder = (*Driver)(nil)

// WarmsOnHost implements vm.HostWarmer: a job's process restores its
// machine from its node's own warm template (Spec.HostWarm).
func (d *Driver) WarmsOnHost() bool { return true }

// firstLine is s's first line, cut to n bytes: what a node says is shown
// to the user as one line.
func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// resolveNode is a node's NodeAddr as one IP address (most clusters name
// nodes by host name), which the node's relay listens on.
func resolveNode(ctx context.Context, addr string) (string, error) {
	if ip, err := netip.ParseAddr(addr); err == nil {
		return ip.String(), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", addr)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("its NodeAddr %s does not resolve: %v", addr, err)
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap().String(), nil
		}
	}
	return ips[0].String(), nil
}

func (d *Driver) submit(ctx context.Context, s vm.Spec) (string, error) {
	args, err := slurmcli.SbatchArgs(d.Settings, slurmcli.Job{Name: "fleet-" + s.Name, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
		Comment: "agentfleet machine " + s.Name})
	if err != nil {
		return "", err
	}
	out, err := d.Runner.Run(ctx, execx.Cmd{Name: "sbatch", Args: args, Stdin: strings.NewReader(d.script()), Unset: unsetForSlurm})
	if err != nil {
		return "", fmt.Errorf("slurm: submit %s: %w", s.Name, err)
	}
	return slurmcli.ParseSbatch(string(out))
}

// unsetForSlurm keeps from the Slurm commands fleet runs the variables
// they would read as options (SBATCH_PARTITION, SQUEUE_FORMAT...) or copy
// into a job, and every variable that may hold a model credential:
// --export=NONE keeps the user's environment out of the job, and this
// keeps it out of the commands too.
func unsetForSlurm(name string) bool {
	return slurmcli.OptionVar(name) || slices.Contains(credentialVars, name)
}

func (d *Driver) waitRunning(ctx context.Context, id string, wait time.Duration) (slurmcli.JobInfo, error) {
	poll := d.Poll
	if poll <= 0 {
		poll = time.Second
	}

	var deadline <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		deadline = t.C
	}
	for {
		info, err := d.query(ctx, id)
		if err != nil {
			return info, err
		}
		switch {
		case info.State.Running() && info.Node != "":
			return info, nil
		case !info.State.Queued() && !info.State.Held():
			return info, fmt.Errorf("slurm job %s %s before the machine started", id, info.Phrase())
		}
		select {
		case <-ctx.Done():
			return info, ctx.Err()
		case <-deadline:
			return info, fmt.Errorf("slurm job %s is %w (%s)", id, vm.ErrQueued, orNone(info.Reason))
		case <-time.After(poll):
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// query is what Slurm says of one job: squeue while it knows the job,
// else sacct (with accounting), else the job is gone.
func (d *Driver) query(ctx context.Context, id string) (slurmcli.JobInfo, error) {
	if j, ok := d.cachedJob(ctx, id); ok {
		return j, nil
	}
	out, err := d.slurm(ctx, "squeue", slurmcli.SqueueArgs([]string{id})...)
	if err == nil {
		jobs, perr := slurmcli.ParseSqueue(string(out))
		if perr != nil {
			return slurmcli.JobInfo{}, perr
		}
		for _, j := range jobs {
			if j.ID == id {
				return j, nil
			}
		}
	}
	unknown := err == nil || slurmcli.UnknownJob(string(out)) // squeue has it no more
	sout, serr := d.slurm(ctx, "sacct", slurmcli.SacctArgs([]string{id})...)
	if serr == nil {
		if jobs, perr := slurmcli.ParseSacct(string(sout)); perr == nil {
			for _, j := range jobs {
				if j.ID == id {
					return j, nil
				}
			}
		}
	}
	if !unknown {
		return slurmcli.JobInfo{}, fmt.Errorf("slurm: ask about job %s: %w", id, err)
	}
	// Neither knows it: purged after MinJobAge, without accounting (or
	// accounting has no row): it ended.
	return slurmcli.JobInfo{ID: id, State: slurmcli.Completed, Reason: "no longer known to Slurm"}, nil
}

func (d *Driver) slurm(ctx context.Context, name string, args ...string) ([]byte, error) {
	return d.Runner.Run(ctx, execx.Cmd{Name: name, Args: args, Unset: unsetForSlurm})
}

// startRequest is s for the node: its spec with the secrets it needs,
// the proxy files of its folder, and the digests of what it boots.
func (d *Driver) startRequest(s vm.Spec, nodeAddr string, reg *ImageRegistry) (request, error) {
	seed, err := createdSeed(s)
	if err != nil {
		return request{}, err
	}
	s.Seed = seed // a later start passes none
	req := request{Op: "start", Spec: s, ForwardHost: nodeAddr, Registry: reg}
	disk, err := os.Stat(s.BaseImage)
	if err != nil {
		return req, err
	}
	req.Images = append(req.Images, imageFile{Path: s.BaseImage, SHA256: s.BaseImageSHA256, Size: disk.Size()})
	if s.Boot != nil {
		for _, p := range []string{s.Boot.Kernel, s.Boot.Initrd} {
			if p == "" {
				continue
			}
			sum, size, err := fileSHA256(p)
			if err != nil {
				return req, err
			}
			req.Images = append(req.Images, imageFile{Path: p, SHA256: sum, Size: size})
		}
	}
	files, err := readFolderFiles(s.Dir, layout.ProxyFiles)
	if err != nil {
		return req, err
	}
	req.Files = files
	return req, nil
}

func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func readFolderFiles(dir string, names []string) ([]nodeFile, error) {
	var out []nodeFile
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, nodeFile{Name: n, Data: b})
	}
	return out, nil
}

// call sends req to the job's node process through srun, inside the job.
func (d *Driver) call(ctx context.Context, j job, req request) (reply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	var stdout bytes.Buffer
	_, err = d.Runner.Run(ctx, execx.Cmd{Name: "srun", Args: []string{"--jobid=" + j.ID, "--overlap", "--nodes=1", "--ntasks=1",
		"--export=NONE", "--quiet", j.Self, NodeCommand, "call", "--root", j.Root, "--job", j.ID},
		Stdin: bytes.NewReader(body), Stdout: &stdout, Unset: unsetForSlurm})
	if err != nil {
		return reply{}, err
	}
	var rep reply
	if err := json.NewDecoder(io.LimitReader(&stdout, maxReply)).Decode(&rep); err != nil {
		return reply{}, fmt.Errorf("the node's answer is not fleet's: %w", err)
	}
	if rep.Error != "" {
		if len(rep.Error) > 1024 {
			rep.Error = rep.Error[:1024] + "..."
		}
		return rep, errors.New(rep.Error)
	}
	return rep, nil
}

// Stop refuses: a machine's disk lives on its node inside its job, and
// ending the job removes it.
func (d *Driver) Stop(ctx context.Context, s vm.Spec, grace time.Duration) error {
	return errors.New("slurm: a machine's disk lives on its node and goes with its job, so it cannot stop and start again: collect its work, then destroy it")
}

// Status is on while the job runs and its machine has started.
func (d *Driver) Status(ctx context.Context, s vm.Spec) (vm.Status, error) {
	j, ok, err := loadJob(s)
	if err != nil || !ok {
		return vm.Status{Power: vm.PowerOff}, err
	}
	info, err := d.query(ctx, j.ID)
	if err != nil {
		return vm.Status{}, err
	}
	if info.State.Running() && j.SSHAddr != "" {
		return vm.Status{Power: vm.PowerOn, Runtime: vm.Runtime{SSHAddr: j.SSHAddr}}, nil
	}
	return vm.Status{Power: vm.PowerOff}, nil
}

// Placement implements vm.Scheduled.
func (d *Driver) Placement(ctx context.Context, s vm.Spec) (vm.Placement, error) {
	j, ok, err := loadJob(s)
	if err != nil || !ok {
		return vm.Placement{}, err
	}
	info, err := d.query(ctx, j.ID)
	if err != nil {
		return vm.Placement{}, err
	}
	p := vm.Placement{Job: j.ID, Node: info.Node, State: string(info.State), Reason: info.Reason,
		Queued: info.State.Queued(), Ended: info.State.Ended(), Phrase: info.Phrase()}
	if p.Node == "" {
		p.Node = j.Node
	}
	if p.Ended && info.State == slurmcli.Cancelled && !j.Cancelled {
		p.Phrase = "cancelled outside fleet (scancel)"
	}
	return p, nil
}

// Delete ends the job: the node process removes the machine, its proxy
// and its folder when asked (or on scancel's signal), and the job ends.
func (d *Driver) Delete(ctx context.Context, s vm.Spec) error {
	j, ok, err := loadJob(s)
	if err != nil {
		return err
	}
	if !ok {
		return os.RemoveAll(s.Dir) // never submitted
	}
	info, err := d.query(ctx, j.ID)
	if err != nil {
		return err
	}
	if !info.State.Ended() {
		j.Cancelled = true
		_ = saveJob(s, j)
		if info.State.Running() && j.SSHAddr != "" {
			// Asked first, so the node's cleanup is not cut short.
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, _ = d.call(cctx, j, request{Op: "stop"})
			cancel()
		}
		if err := d.cancel(ctx, j.ID); err != nil {
			return err
		}
		if err := d.waitEnded(ctx, j.ID, 2*time.Minute); err != nil {
			return err
		}
	}
	// Everything Create made here: the record, the seed, the proxy files.
	return os.RemoveAll(s.Dir)
}

func (d *Driver) cancel(ctx context.Context, id string) error {
	_, err := d.slurm(ctx, "scancel", slurmcli.ScancelArgs(id)...)
	return err
}

func (d *Driver) waitEnded(ctx context.Context, id string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		info, err := d.query(ctx, id)
		if err != nil {
			return err
		}
		if info.State.Ended() {
			return nil
		}
		if time.Now().After(deadline) {
			if info.State.Ending() {
				return nil // COMPLETING on a node that is gone: nothing more to wait for
			}
			return fmt.Errorf("slurm job %s is still %s %s after scancel", id, strings.ToLower(string(info.State)), limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// PushFiles implements vm.RemoteFolder: the named files of s.Dir reach
// the node's copy of the folder, where its proxies read them.
func (d *Driver) PushFiles(ctx context.Context, s vm.Spec, names []string) error {
	j, ok, err := loadJob(s)
	if err != nil || !ok || j.SSHAddr == "" {
		return err
	}
	files, err := readFolderFiles(s.Dir, names)
	if err != nil {
		return err
	}
	_, err = d.call(ctx, j, request{Op: "push", Files: files})
	return err
}

// PullFiles implements vm.RemoteFolder: the node's copies of the named
// files (what its proxies wrote) replace s.Dir's; an append-only log
// (the audit log) is brought up to date from where s.Dir's copy ends, in
// rounds of at most maxFile bytes, so the whole of it is here.
func (d *Driver) PullFiles(ctx context.Context, s vm.Spec, names []string) error {
	j, ok, err := loadJob(s)
	if err != nil || !ok || j.SSHAddr == "" {
		return err
	}
	var whole []string
	for _, n := range names {
		if appendOnly[n] {
			if err := d.pullLog(ctx, j, s.Dir, n); err != nil {
				return err
			}
		} else {
			whole = append(whole, n)
		}
	}
	if len(whole) == 0 {
		return nil
	}
	rep, err := d.call(ctx, j, request{Op: "pull", Names: whole})
	if err != nil {
		return err
	}
	asked := map[string]bool{}
	for _, n := range whole {
		asked[n] = true
	}
	for _, f := range rep.Files {
		if !asked[f.Name] || checkFileName(f.Name) != nil {
			return fmt.Errorf("the node sent a file named %q", f.Name)
		}
		if err := replaceFile(filepath.Join(s.Dir, f.Name), f.Data); err != nil {
			return err
		}
	}
	return nil
}

// appendOnly are the proxy files only ever appended to (and rotated).
var appendOnly = map[string]bool{layout.AuditFile: true}

// maxLogRounds bounds one pull of a log: 16 rounds of maxFile.
const maxLogRounds = 16

// pullLog brings dir's copy of the node's log name up to date. Which node
// file the copy is of (its inode) is kept beside it; a rotated log (a new
// inode) replaces the copy from its start.
func (d *Driver) pullLog(ctx context.Context, j job, dir, name string) error {
	local := filepath.Join(dir, name)
	marker := filepath.Join(dir, "."+name+".pulled")
	for round := 0; round < maxLogRounds; round++ {
		var have pullFrom
		if b, err := os.ReadFile(marker); err == nil {
			_ = json.Unmarshal(b, &have)
			if st, err := os.Stat(local); err == nil {
				have.Offset = st.Size()
			} else {
				have = pullFrom{}
			}
		}
		rep, err := d.call(ctx, j, request{Op: "pull", Names: []string{name}, From: map[string]pullFrom{name: have}})
		if err != nil {
			return err
		}
		if len(rep.Files) == 0 {
			return nil // the node has none yet
		}
		f := rep.Files[0]
		if len(rep.Files) != 1 || f.Name != name || f.Offset < 0 || f.Size < f.Offset+int64(len(f.Data)) {
			return fmt.Errorf("the node sent %d files for %s (%q at %d of %d)", len(rep.Files), name, f.Name, f.Offset, f.Size)
		}
		switch {
		case f.Ino == have.Ino && f.Offset == have.Offset && have.Offset > 0:
			if err := appendFile(local, f.Data); err != nil {
				return err
			}
		case f.Offset == 0:
			if err := replaceFile(local, f.Data); err != nil {
				return err
			}
		default:
			return fmt.Errorf("the node sent %s from byte %d, not %d", name, f.Offset, have.Offset)
		}
		b, _ := json.Marshal(pullFrom{Ino: f.Ino})
		if err := replaceFile(marker, b); err != nil {
			return err
		}
		if f.Offset+int64(len(f.Data)) >= f.Size {
			return nil
		}
	}
	return nil // the rest comes with the next pull
}

func replaceFile(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".pull")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
