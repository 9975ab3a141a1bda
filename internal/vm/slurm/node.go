package slurm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/agentfleet/agentfleet/internal/egress"
	"github.com/agentfleet/agentfleet/internal/filelock"
	"github.com/agentfleet/agentfleet/internal/layout"
	"github.com/agentfleet/agentfleet/internal/vm"
)

// NodeDriver builds the node's own driver: QEMU, forwarding the guest's
// SSH on the node's loopback. It also says the accelerator the node uses
// ("tcg" means emulated, and the controller warns).
type NodeDriver func() (d vm.Driver, accel string)

// NodeWarm keeps warm templates in this user's node store: Template finds
// the one for machines of s's shape (s as the node boots it: its images
// in the store), making it first when mayMake and there is none; Identify
// gives a machine restored from one its Seed's identity over the node
// driver's guest agent; Forget removes one that did not restore. fleet's own template maker implements it
// (cmd/fleet wires it in); nil boots every machine.
type NodeWarm interface {
	Template(ctx context.Context, d vm.Driver, store string, s vm.Spec, mayMake bool) (vm.Template, error)
	Identify(ctx context.Context, d vm.Driver, s vm.Spec) error
	// Forget removes a template or prebuild that failed to restore.
	Forget(ctx context.Context, t vm.Template) error
	// Prebuild finds the node's prebuild of s.HostPrebuild for machines
	// of s's shape (never makes one); SavePrebuild captures the running
	// machine s, restored from the node's template, as the prebuild of
	// key, and returns its size on disk.
	Prebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec) (vm.Template, error)
	SavePrebuild(ctx context.Context, d vm.Driver, store string, s vm.Spec, key string, info vm.PrebuildInfo) (int64, error)
}

// NodeMain is `fleet __slurm-node run|call`: run is a job's one process
// (the job script execs it), call relays one request from srun's stdin to
// it. It returns the exit status.
func NodeMain(args []string, newDriver NodeDriver, warm NodeWarm, blobs BlobOpener) int {
	if len(args) < 1 || (args[0] != "run" && args[0] != "call") {
		fmt.Fprintln(os.Stderr, "usage: fleet "+NodeCommand+" run|call --root DIR [--job ID] (started by Slurm; see fleet spawn --provider slurm)")
		return 2
	}
	fs := flag.NewFlagSet(NodeCommand, flag.ContinueOnError)
	root := fs.String("root", "", "node-local folder of fleet's machines and images")
	job := fs.String("job", os.Getenv("SLURM_JOB_ID"), "the job")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if !jobIDRe.MatchString(*job) {
		fmt.Fprintf(os.Stderr, "fleet %s: no Slurm job id (got %q)\n", NodeCommand, *job)
		return 2
	}
	user, err := userFolder(expandRoot(*root))
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet %s: %v\n", NodeCommand, err)
		return 1
	}
	dir := filepath.Join(user, layout.NodeJobPrefix+*job)
	if args[0] == "call" {
		if err := call(dir, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "fleet %s call: %v\n", NodeCommand, err)
			return 1
		}
		return 0
	}
	// The job may have the user's login environment (sbatch loads it for
	// --export=NONE): no credential from it reaches QEMU or the proxies,
	// which get only the start request's. No core dump may write one.
	for _, k := range credentialVars {
		_ = os.Unsetenv(k)
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{})
	// What the job makes is this user's alone, wherever the hypervisor
	// puts it (a control socket moved to TMPDIR when its path is long).
	syscall.Umask(0o077)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	n := &node{dir: dir, user: user, newDriver: newDriver, warm: warm, blobs: blobs, done: make(chan string, 1)}
	why, err := n.run(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet %s run: %v\n", NodeCommand, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fleet %s run: %s\n", NodeCommand, why)
	return 0
}

var jobIDRe = regexp.MustCompile(`^[0-9]{1,12}$`)

// expandRoot replaces %n with the node's name, as slurm.conf does: a test
// cluster's nodes share one file system, a real one has a folder per node.
func expandRoot(root string) string {
	if root == "" {
		root = DefaultNodeRoot
	}
	return strings.ReplaceAll(root, "%n", os.Getenv("SLURMD_NODENAME"))
}

// DefaultNodeRoot is where nodes keep fleet's machines and images.
const DefaultNodeRoot = "/var/tmp/agentfleet"

// userFolder is this user's own folder for root: root+"-u<uid>", made
// owner-only by this user. No other user may be able to rename or replace
// it or any folder above it, or they could stand in for the job's socket
// or image store: every ancestor must be owned by root or this user and,
// if others may write it, sticky (as /var/tmp is). A link, or a folder
// someone else made, is refused.
func userFolder(root string) (string, error) {
	if !filepath.IsAbs(root) {
		return "", fmt.Errorf("node folder %q is not absolute", root)
	}
	uid := os.Getuid()
	dir := filepath.Clean(root) + fmt.Sprintf("-u%d", uid)
	if err := safeAncestors(filepath.Dir(dir), uid); err != nil {
		return "", err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || sys == nil || int(sys.Uid) != uid {
		return "", fmt.Errorf("%s is not a folder of this user's: refusing it (someone else made it)", dir)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// safeAncestors makes dir (with MkdirAll) and checks it and every folder
// above it.
func safeAncestors(dir string, uid int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for p := dir; ; p = filepath.Dir(p) {
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys, _ := st.Sys().(*syscall.Stat_t)
		switch {
		case !st.IsDir() || sys == nil:
			return fmt.Errorf("node folder: %s is not a folder (a link?)", p)
		case sys.Uid != 0 && int(sys.Uid) != uid:
			return fmt.Errorf("node folder: %s belongs to another user, who could replace what fleet keeps under it: choose another slurm node_dir", p)
		case st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0:
			return fmt.Errorf("node folder: others may write %s and it is not sticky: choose another slurm node_dir", p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

const ctlSocket = layout.NodeControlFile

// startWait is how long a running job waits for fleet's start request.
var startWait = 15 * time.Minute

// node is a job's process: one machine.
type node struct {
	dir, user string
	newDriver NodeDriver
	warm      NodeWarm
	blobs     BlobOpener // nil: images come from shared paths only

	mu      sync.Mutex // one request at a time
	driver  vm.Driver
	spec    vm.Spec
	started bool
	// prebuilt: its machine was restored from the node's prebuild.
	prebuilt bool
	relay    net.Listener // the node address's SSH relay
	done     chan string  // why the job ends
}

func (n *node) run(ctx context.Context) (string, error) {
	_ = os.RemoveAll(n.dir) // a folder left by a job of the same id (a restarted cluster)
	if err := os.Mkdir(n.dir, 0o700); err != nil {
		return "", err
	}
	defer n.cleanup()
	sock := filepath.Join(n.dir, ctlSocket)
	if len(sock) > 100 {
		return "", fmt.Errorf("node folder %s is too long for a unix socket: choose a shorter slurm node_dir", n.dir)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	go n.accept(ctx, ln)
	go n.watch(ctx)
	// A job whose start never comes (the fleet command that would send
	// it died) gives its allocation back instead of idling to its limit.
	noStart := time.NewTimer(startWait)
	defer noStart.Stop()
	for {
		select {
		case <-ctx.Done():
			return "ended by a signal", nil
		case why := <-n.done:
			return why, nil
		case <-noStart.C:
			n.mu.Lock()
			started := n.started
			n.mu.Unlock()
			if !started {
				return "no start request from fleet in " + startWait.String(), nil
			}
		}
	}
}

func (n *node) accept(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Minute))
			rep := n.handle(ctx, c)
			b, _ := json.Marshal(rep)
			_, _ = c.Write(b)
		}()
	}
}

// watch ends the job when the machine's hypervisor is gone (the guest
// powered off or crashed): the job is the machine's lifetime.
func (n *node) watch(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		d, s, started := n.driver, n.spec, n.started
		n.mu.Unlock()
		if !started {
			continue
		}
		if st, err := d.Status(ctx, s); err == nil && st.Power == vm.PowerOff {
			n.end("the machine's hypervisor exited")
			return
		}
	}
}

func (n *node) end(why string) {
	select {
	case n.done <- why:
	default:
	}
}

// cleanup leaves nothing of the machine on the node: its hypervisor, its
// proxy server and its folder. Images stay in the user's store.
func (n *node) cleanup() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.relay != nil {
		n.relay.Close()
	}
	if n.driver != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = n.driver.Delete(ctx, n.spec)
		cancel()
	}
	egress.StopServer(n.dir)
	_ = os.RemoveAll(n.dir)
}

func (n *node) handle(ctx context.Context, c net.Conn) reply {
	var req request
	if err := json.NewDecoder(io.LimitReader(c, maxRequest)).Decode(&req); err != nil {
		return reply{Error: "bad request: " + err.Error()}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch req.Op {
	case "start":
		rep, err := n.start(ctx, req)
		if err != nil {
			return reply{Error: err.Error()}
		}
		return rep
	case "push":
		if err := n.writeFiles(req.Files); err != nil {
			return reply{Error: err.Error()}
		}
		return reply{}
	case "pull":
		files, err := n.readFiles(req.Names, req.From)
		if err != nil {
			return reply{Error: err.Error()}
		}
		return reply{Files: files}
	case "save-prebuild":
		note, err := n.savePrebuild(ctx, req.Prebuild)
		if err != nil {
			return reply{Error: err.Error()}
		}
		return reply{Note: note}
	case "stop":
		n.end("stopped by fleet")
		return reply{}
	}
	return reply{Error: fmt.Sprintf("unknown request %q", req.Op)}
}

func (n *node) start(ctx context.Context, req request) (reply, error) {
	if n.started {
		return reply{}, errors.New("this job's machine has started already")
	}
	s := req.Spec
	if s.Share != nil || s.Template != nil || s.MemoryFile != "" {
		return reply{}, errors.New("a Slurm machine starts from its image on the node: the controller sends no shared folder, template or memory file")
	}
	if net.ParseIP(req.ForwardHost) == nil {
		return reply{}, fmt.Errorf("forward address %q is not an IP address", req.ForwardHost)
	}
	local := map[string]string{}
	var fetched []string // what this start copied into the store, and from where
	for _, im := range req.Images {
		p, how, err := n.fetchImage(ctx, filepath.Join(n.user, layout.NodeImagesFolder), im, req.Registry)
		if err != nil {
			return reply{}, err
		}
		local[im.Path] = p
		if how != "" {
			fetched = append(fetched, how)
		}
	}
	mapped := func(p string) (string, error) {
		if l, ok := local[p]; ok {
			return l, nil
		}
		return "", fmt.Errorf("%s came without a digest: refusing to boot it", p)
	}
	var err error
	if s.BaseImage, err = mapped(s.BaseImage); err != nil {
		return reply{}, err
	}
	if s.Boot != nil {
		b := *s.Boot
		if b.Kernel, err = mapped(b.Kernel); err != nil {
			return reply{}, err
		}
		if b.Initrd != "" {
			if b.Initrd, err = mapped(b.Initrd); err != nil {
				return reply{}, err
			}
		}
		s.Boot = &b
	}
	self, err := os.Executable()
	if err != nil {
		return reply{}, err
	}
	// The forwards are this binary's proxies for the controller's machine
	// folder: here they serve this job's folder.
	for i, f := range s.Network.Forwards {
		cmd := append([]string(nil), f.Command...)
		if len(cmd) > 0 {
			cmd[0] = self
		}
		for j := range cmd {
			if cmd[j] == s.Dir {
				cmd[j] = n.dir
			}
		}
		s.Network.Forwards[i].Command = cmd
	}
	s.Dir = n.dir
	if err := n.writeFiles(req.Files); err != nil {
		return reply{}, err
	}
	d, accel := n.newDriver()
	restored, prebuilt, note, setupNote := n.warmStart(ctx, d, &s)
	t0 := time.Now()
	rt, err := n.create(ctx, d, s)
	if err != nil && restored {
		// A template that does not restore (a QEMU that changed under the
		// same key, a damaged file) is removed, and the machine boots.
		tpl := *s.Template
		ferr := n.warm.Forget(ctx, tpl)
		what := map[bool]string{false: "warm template", true: "prebuild of the project"}[prebuilt]
		s.Template, restored, prebuilt = nil, false, false
		note = fmt.Sprintf("booted: this node's %s did not restore (%v); it was removed (%v)", what, firstLine(err.Error(), 200), ferr)
		rt, err = n.create(ctx, d, s)
	}
	if err != nil {
		return reply{}, err
	}
	if restored {
		if err := n.warm.Identify(ctx, d, s); err != nil {
			// It must never answer as the template: it goes.
			n.dropMachine(ctx)
			return reply{}, fmt.Errorf("restored from this node's warm template, but: %w", err)
		}
		note += fmt.Sprintf(", restored and given its identity in %s", time.Since(t0).Round(10*time.Millisecond))
	}
	note += setupNote
	if len(fetched) > 0 {
		if note != "" {
			note += "; "
		}
		note += "image files " + strings.Join(fetched, ", ")
	}
	n.started, n.prebuilt = true, prebuilt
	// The guest's SSH is on the node's loopback, where the user network
	// shows connections as its own gateway's; one from the node's address
	// would keep its source, which a guest without a default route (a
	// restricted one) cannot answer. The job relays the node's address.
	ln, err := net.Listen("tcp", net.JoinHostPort(req.ForwardHost, "0"))
	if err != nil {
		return reply{}, fmt.Errorf("listen on the node's address %s: %w", req.ForwardHost, err)
	}
	go relay(ln, rt.SSHAddr)
	n.relay = ln
	return reply{SSHAddr: ln.Addr().String(), Accel: accel, Note: note, Prebuilt: prebuilt}, nil
}

// create makes and starts s with d, as the job's machine; on failure
// nothing of it stays.
func (n *node) create(ctx context.Context, d vm.Driver, s vm.Spec) (vm.Runtime, error) {
	n.driver, n.spec = d, s
	err := d.Create(ctx, s)
	var rt vm.Runtime
	if err == nil {
		rt, err = d.Start(ctx, s)
	}
	if err != nil {
		n.dropMachine(ctx)
	}
	return rt, err
}

// dropMachine deletes the machine being started, so that cleanup and a
// later start find none.
func (n *node) dropMachine(ctx context.Context) {
	if n.driver == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	_ = n.driver.Delete(cctx, n.spec)
	n.driver, n.spec = nil, vm.Spec{}
}

// warmStart points s at this node's warm template of its shape when the
// controller asked for one (making it first if it may), and says how the
// machine starts: restored, or booted and why.
//
// Asked for the project's prebuild (s.HostPrebuild), it restores that
// instead where the node holds it (prebuilt), else says the machine runs
// the setup.
func (n *node) warmStart(ctx context.Context, d vm.Driver, s *vm.Spec) (restored, prebuilt bool, note, setupNote string) {
	if s.HostWarm == vm.HostWarmOff {
		return false, false, "", ""
	}
	if n.warm == nil {
		return false, false, "booted: this fleet binary keeps no warm templates on nodes", ""
	}
	store := filepath.Join(n.user, layout.NodeTemplatesFolder)
	if len(s.HostPrebuild) > maxKeySize {
		setupNote = "; the prebuild key asked for is too long, so the machine runs the setup"
	} else if s.HostPrebuild != "" {
		t, err := n.warm.Prebuild(ctx, d, store, *s)
		if err == nil {
			s.Template = &t
			return true, true, "from this node's prebuild of the project (setup skipped)", ""
		}
		setupNote = "; " + firstLine(err.Error(), 200) + ", so the machine runs the setup"
	}
	t0 := time.Now()
	t, err := n.warm.Template(ctx, d, store, *s, s.HostWarm == vm.HostWarmMake)
	if err != nil {
		return false, false, "booted: no warm template on this node: " + err.Error(), setupNote
	}
	s.Template = &t
	note = "from this node's warm template"
	if took := time.Since(t0); took > 5*time.Second {
		note += fmt.Sprintf(" (made now in %s: one cold boot, then each machine of this shape restores it)", took.Round(time.Second))
	}
	return true, false, note, setupNote
}

// savePrebuild saves the job's running machine as this node's prebuild
// of p.Key. Only a machine restored from the node's warm template is
// saved: its disk is an overlay on a file the node checked.
func (n *node) savePrebuild(ctx context.Context, p *prebuildSave) (string, error) {
	switch {
	case p == nil || p.Key == "":
		return "", errors.New("save-prebuild without a key")
	case len(p.Key) > maxKeySize:
		return "", errors.New("the prebuild key is too long")
	case !n.started || n.driver == nil:
		return "", errors.New("this job's machine has not started")
	case n.warm == nil:
		return "", errors.New("this fleet binary keeps no prebuilds on nodes")
	case n.spec.Template == nil:
		return "", errors.New("this job's machine was booted, not restored from this node's warm template, so no prebuild of it would restore")
	case n.prebuilt:
		return "", errors.New("this job's machine was restored from a prebuild, not from this node's warm template")
	}
	if b, _ := json.Marshal(p.Info); len(b) > maxPrebuildInfo {
		return "", fmt.Errorf("the prebuild's description is %d bytes, more than %d", len(b), maxPrebuildInfo)
	}
	s := n.spec
	s.HostPrebuild = ""
	t0 := time.Now()
	size, err := n.warm.SavePrebuild(ctx, n.driver, filepath.Join(n.user, layout.NodeTemplatesFolder), s, p.Key, p.Info)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("saved as this node's prebuild of the project (%d MiB) in %s", size>>20, time.Since(t0).Round(100*time.Millisecond)), nil
}

// maxRelayConns bounds the SSH connections one machine's relay holds.
const maxRelayConns = 64

// relay copies each connection to ln to target until ln is closed.
func relay(ln net.Listener, target string) {
	slots := make(chan struct{}, maxRelayConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close() // full: the controller retries
			continue
		}
		go func() {
			defer func() { <-slots }()
			defer c.Close()
			g, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				return
			}
			defer g.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(g, c); closeWrite(g); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, g); closeWrite(c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// fileNameRe is a proxy file's base name in a machine folder.
var fileNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

func checkFileName(name string) error {
	if len(name) > maxNameSize || !fileNameRe.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("file name %q is not a machine folder's", name)
	}
	return nil
}

func (n *node) writeFiles(files []nodeFile) error {
	if len(files) > maxFiles {
		return fmt.Errorf("%d files: at most %d", len(files), maxFiles)
	}
	for _, f := range files {
		if err := checkFileName(f.Name); err != nil {
			return err
		}
		if len(f.Data) > maxFile {
			return fmt.Errorf("%s is %d bytes: at most %d", f.Name, len(f.Data), maxFile)
		}
		tmp := filepath.Join(n.dir, "."+f.Name+".tmp")
		if err := os.WriteFile(tmp, f.Data, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(n.dir, f.Name)); err != nil {
			return err
		}
	}
	return nil
}

func (n *node) readFiles(names []string, from map[string]pullFrom) ([]nodeFile, error) {
	if len(names) > maxFiles {
		return nil, fmt.Errorf("%d files: at most %d", len(names), maxFiles)
	}
	var out []nodeFile
	for _, name := range names {
		if err := checkFileName(name); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(n.dir, name), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%s is not a regular file", name)
		}
		size, ino := st.Size(), inode(st)
		// Without an offset, the newest part of a log is what a reader
		// wants; with one, the bytes after what the controller has of this
		// same file (another inode, or a shorter file: it was rotated, so
		// from its start).
		start := max(size-maxFile, 0)
		if want, ok := from[name]; ok {
			start = want.Offset
			if want.Ino != ino || start < 0 || start > size {
				start = 0
			}
		}
		_, _ = f.Seek(start, io.SeekStart)
		b, err := io.ReadAll(io.LimitReader(f, min(size-start, maxFile)))
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, nodeFile{Name: name, Data: b, Offset: start, Size: size, Ino: ino})
	}
	return out, nil
}

// inode is st's inode number (0 where the platform has none).
func inode(st os.FileInfo) uint64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Ino
	}
	return 0
}

var sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)

// fetchImage is im in this user's node store, copied the first time from
// its shared path or, where the node has no such file, pulled from the
// fleet's registry by its digest. Either way its content is checked
// against the digest and size the controller sent as it is copied, and a
// file that does not match is never kept. Jobs fetching the same file on
// one node copy it once.
func (n *node) fetchImage(ctx context.Context, store string, im imageFile, reg *ImageRegistry) (path, how string, err error) {
	if !sha256Re.MatchString(im.SHA256) {
		return "", "", fmt.Errorf("%s: digest %q is not a sha256", im.Path, im.SHA256)
	}
	if err := os.MkdirAll(store, 0o700); err != nil {
		return "", "", err
	}
	dst := filepath.Join(store, "sha256-"+im.SHA256)
	have := func() bool { st, err := os.Lstat(dst); return err == nil && st.Mode().IsRegular() }
	if have() {
		return dst, "", nil
	}
	locks := filepath.Join(filepath.Dir(store), layout.NodeImageLocks)
	if err := os.MkdirAll(locks, 0o700); err != nil {
		return "", "", err
	}
	unlock, err := filelock.Exclusive(ctx, filepath.Join(locks, "sha256-"+im.SHA256), "the node's copy of "+filepath.Base(im.Path), nil)
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if have() { // another job on this node copied it meanwhile
		return dst, "", nil
	}
	t0 := time.Now()
	// A source that stops sending (a stalled registry, a hung shared file
	// system) ends the copy instead of holding the job and the lock.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stalled := time.AfterFunc(copyStall, cancel)
	defer stalled.Stop()
	src, from, err := n.openImage(cctx, im, reg)
	if err != nil {
		return "", "", err
	}
	defer src.Close()
	// One name per digest, taken under its lock: a copy a killed job left
	// is overwritten, never piles up beside the next.
	tmpName := filepath.Join(store, ".fetch-sha256-"+im.SHA256)
	tmp, err := os.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", "", err
	}
	defer os.Remove(tmpName)
	h := sha256.New()
	// One byte past the size the controller sent shows a longer file (a
	// controller of an older fleet sends no size).
	var in io.Reader = &progressReader{r: src, onData: func() { stalled.Reset(copyStall) }}
	if im.Size > 0 {
		in = io.LimitReader(in, im.Size+1)
	}
	copied, err := io.Copy(io.MultiWriter(tmp, h), in)
	if err != nil {
		tmp.Close()
		if cctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("nothing came for %s: %w", copyStall, err)
		}
		return "", "", fmt.Errorf("copy %s to the node (%s): %w", im.Path, from, err)
	}
	// On disk before its name says it is checked: a later job trusts the
	// name alone, and a crash must not leave it short.
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", "", err
	}
	if err := tmp.Close(); err != nil {
		return "", "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != im.SHA256 || (im.Size > 0 && copied != im.Size) {
		return "", "", fmt.Errorf("%s (%s) is sha256 %s (%d bytes), not %s (%d bytes) as the fleet's image says: not used", im.Path, from, got[:12], copied, im.SHA256[:12], im.Size)
	}
	if err := os.Chmod(tmpName, 0o400); err != nil {
		return "", "", err
	}
	if err := os.Rename(tmpName, dst); err != nil {
		return "", "", err
	}
	if d, err := os.Open(store); err == nil {
		_ = d.Sync() // the rename itself
		d.Close()
	}
	return dst, fmt.Sprintf("%s (%d MiB) %s in %s", filepath.Base(im.Path), copied>>20, from, time.Since(t0).Round(100*time.Millisecond)), nil
}

// copyStall is how long a copy into the node's store may go without a
// byte before it is given up.
var copyStall = time.Minute

// progressReader calls onData after each read that returned bytes.
type progressReader struct {
	r      io.Reader
	onData func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onData()
	}
	return n, err
}

// openImage opens im on the node's shared path, or where the node has no
// such file and the fleet names a registry, its blob there; from says
// which, for errors.
func (n *node) openImage(ctx context.Context, im imageFile, reg *ImageRegistry) (rc io.ReadCloser, from string, err error) {
	f, err := os.OpenFile(im.Path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err == nil {
		st, serr := f.Stat()
		if serr != nil || !st.Mode().IsRegular() {
			f.Close()
			return nil, "", fmt.Errorf("%s is not a regular file", im.Path)
		}
		return f, "copied from the shared path", nil
	}
	if !errors.Is(err, fs.ErrNotExist) || reg == nil {
		if reg == nil {
			return nil, "", fmt.Errorf("the image file %s is not on this node's shared path (%w), and fleet.hcl's slurm block names no image_registry to pull it from", im.Path, err)
		}
		return nil, "", fmt.Errorf("the image file %s on this node's shared path: %w", im.Path, err)
	}
	if n.blobs == nil {
		return nil, "", fmt.Errorf("the image file %s is not on this node's shared path, and this fleet binary cannot pull from a registry", im.Path)
	}
	if im.Size <= 0 {
		return nil, "", fmt.Errorf("%s: no size to pull it by", im.Path)
	}
	rc, err = n.blobs(ctx, *reg, im.SHA256, im.Size)
	if err != nil {
		return nil, "", fmt.Errorf("the image file %s is not on this node's shared path, and pulling it from %s failed: %w", im.Path, reg.Ref, err)
	}
	return rc, "pulled from " + reg.Ref, nil
}

// call relays one request from in to the job's process and its reply to
// out. The process may still be starting: its socket is waited for.
func call(dir string, in io.Reader, out io.Writer) error {
	sock := filepath.Join(dir, ctlSocket)
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the job's fleet process does not answer at %s: %w", sock, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer conn.Close()
	if _, err := io.Copy(conn, io.LimitReader(in, maxRequest)); err != nil {
		return err
	}
	if uc, ok := conn.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	_, err = io.Copy(out, io.LimitReader(conn, maxReply))
	return err
}
